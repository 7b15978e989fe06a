"""The command line: parse, call the library, print. Text goes to stdout; progress,
logs and errors go to stderr. Heavy modules load inside the commands, so that
`charrnn --help` stays fast."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys

import click

from charrnn import __version__
from charrnn.errors import CharrnnError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Duration(click.ParamType):
    """A time span: 90, 90s, 5m, 1.5h, 1h30m."""

    name = "duration"
    _part = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)")
    _units = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        pos, total = 0, 0.0
        for m in self._part.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * self._units[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            self.fail(f"{value!r} is not a duration (examples: 90s, 5m, 1h30m)", param, ctx)
        if total <= 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return total


class StepsOrDuration(Duration):
    """A number of steps (500) or a time span with its unit (90s, 1m); a time span
    becomes the seconds as a string, "60s", as TrainConfig keeps it."""

    name = "steps-or-duration"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if not text or text[-1].lower() not in "smh":
            self.fail(f"{value!r} is neither a number of steps nor a duration (examples: 500, 90s, 1m)", param, ctx)
        return f"{super().convert(text, param, ctx):g}s"


# What to try when a command runs out of memory.
MEMORY_HINTS = {"train": "try a smaller model, --batch-size or --seq-len", "sample": "try a smaller --length or --num-samples",
                "evaluate": "try a shorter text"}


def _signal_status(signum) -> int:
    """The status a shell gives a command its signal ended: 128 + the signal, 130 for
    Ctrl-C (also when no signal is known), 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


def user_errors(func):
    """Turn the library's errors into Click's one-line 'Error: ...' and exit code 1,
    and Ctrl-C into a short note and exit code 130 (128 + SIGINT), as shells expect."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CharrnnError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            err("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # the reader went away (`charrnn sample ... | head`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit cannot fail again
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a command killed by it
        except MemoryError:
            hint = MEMORY_HINTS.get(click.get_current_context().info_name)
            raise click.ClickException("out of memory" + (f": {hint}" if hint else "")) from None
        except OSError as e:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None

    return wrapper


def err(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="charrnn")
def cli():
    """Train character-level recurrent language models on a CPU, generate text in the
    same style, and score text by perplexity.

    \b
    Example:
      charrnn train data/tinyshakespeare.txt --out runs/shakespeare
      charrnn sample runs/shakespeare/best.safetensors --prime "ROMEO:"
    """


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Where to write the vocabulary (JSON); '-' writes to stdout.")
@user_errors
def vocab(corpus, output):
    """Build the vocabulary (every distinct character) of one or more UTF-8 files.

    \b
    Example:
      charrnn vocab part1.txt part2.txt -o vocab.json
    """
    from charrnn.data import scan_vocab

    v = scan_vocab(corpus)
    if output == "-":
        click.echo(v.to_json())
    else:
        v.save(output)
        err(f"wrote {output}: {len(v)} characters")


@cli.command()
@click.argument("corpus", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Run directory: receives last.safetensors, best.safetensors and metrics.jsonl.")
@click.option("--vocab", "vocab_path", type=click.Path(), help="Use this vocabulary (from `charrnn vocab`).")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), show_default="lstm", help="Recurrent cell.")
@click.option("--layers", type=int, show_default="2", help="Number of recurrent layers.")
@click.option("--hidden", type=int, show_default="256", help="Hidden units per layer.")
@click.option("--embed", type=int, show_default="64", help="Character embedding size.")
@click.option("--dropout", type=float, show_default="0", help="Dropout between layers and before the output.")
@click.option("--batch-size", type=int, show_default="32", help="Parallel streams per batch (B).")
@click.option("--seq-len", type=int, show_default="50", help="Characters per stream per batch (T, the BPTT length).")
@click.option("--lr", type=float, show_default="0.004", help="Adam's peak learning rate.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "linear", "constant"]), show_default="cosine",
              help="How the learning rate decays from --lr to --min-lr-frac x --lr over the budget.")
@click.option("--warmup-steps", type=int, show_default="100",
              help="Raise the learning rate linearly over the first N steps.")
@click.option("--min-lr-frac", type=float, show_default="0",
              help="The fraction of --lr the decay reaches at the end of the budget.")
@click.option("--grad-clip", type=float, show_default="5", help="Clip the gradient's global norm to this.")
@click.option("--val-frac", type=float, show_default="0.1", help="Last fraction of the corpus held out for validation.")
@click.option("--eval-every", type=StepsOrDuration(), show_default="1m",
              help="Validate and checkpoint every N steps (500) or every so much training time (1m, 90s).")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps in total.")
@click.option("--max-epochs", type=float, help="Stop after this many passes over the training text.")
@click.option("--max-time", type=Duration(), help="Stop after this much training time, e.g. 90s, 5m, 1h.")
@click.option("--seed", type=int, show_default="0", help="Seed for initialisation and dropout.")
@click.option("--forget-bias", type=float, show_default="0",
              help="Added to the LSTM's forget-gate biases at initialisation (new runs only).")
@click.option("--resume", type=click.Path(), help="Continue training from this checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start a new run even if --out already holds one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@user_errors
def train(corpus, out_dir, vocab_path, cell, layers, hidden, embed, dropout, batch_size, seq_len, lr,
          lr_schedule, warmup_steps, min_lr_frac, grad_clip, val_frac, eval_every, max_steps, max_epochs,
          max_time, seed, forget_bias, resume, overwrite, quiet):
    """Train a model on a UTF-8 text file.

    Without a budget (--max-steps, --max-epochs or --max-time) it trains for 5 minutes.

    \b
    Example:
      charrnn train corpus.txt --out runs/mine --max-time 10m
    """
    from charrnn.train import Trainer

    model_flags = dict(cell=cell, layers=layers, hidden=hidden, embed=embed, dropout=dropout)
    train_flags = dict(batch_size=batch_size, seq_len=seq_len, lr=lr, lr_schedule=lr_schedule,
                       warmup_steps=warmup_steps, min_lr_frac=min_lr_frac, grad_clip=grad_clip,
                       val_frac=val_frac, eval_every=eval_every, max_steps=max_steps,
                       max_epochs=max_epochs, max_time=max_time, seed=seed, forget_bias=forget_bias)
    if resume is None and max_steps is None and max_epochs is None and max_time is None:
        train_flags["max_time"] = 300.0
    trainer = Trainer(corpus, out_dir, model_flags, train_flags, vocab_path=vocab_path,
                      resume=resume, overwrite=overwrite, progress=not quiet)
    try:
        summary = trainer.run()
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: stopped at once, mid-step or mid-write
        err(f"interrupted; the files in {out_dir} are complete, as of the last save")
        sys.exit(_signal_status(trainer.stop_signal))
    best = summary["best_val_loss"]
    best_text = "n/a" if best is None else f"{best:.4f} nats/char (step {summary['best_step']})"
    if summary["interrupted"]:
        how = "terminated (SIGTERM)" if summary["signal"] == signal.SIGTERM else "interrupted"
        if summary["trained"]:
            err(f"{how} at step {summary['step']}; saved {summary['last']} "
                f"(best.safetensors untouched); continue with --resume {summary['last']}")
        else:
            err(f"{how} at step {summary['step']} before any training step; nothing was written")
        sys.exit(_signal_status(summary["signal"]))
    err(f"done: {summary['step']} steps in {summary['elapsed']:.0f}s; best validation loss {best_text}; "
        f"saved {summary['last']} and {summary['best']}")


def _load_network(path):
    from charrnn.checkpoint import load_checkpoint
    from charrnn.model import Network

    ckpt = load_checkpoint(path, with_training_state=False)
    return ckpt, Network(ckpt.config, ckpt.params)


def _rule(name):
    """A Click callback that refuses a value breaking charrnn.sample.RULES[name]
    with a message naming the flag (None, an option not given, passes)."""

    def check(ctx, param, value):
        from charrnn.sample import RULES

        ok, what = RULES[name]
        if value is not None and not ok(value):
            raise click.BadParameter(f"must be {what}, got {value}", ctx, param)
        return value

    return check


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ in a flag's value as the characters they name; any other
    backslash stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-n", "--length", type=int, default=500, show_default=True, callback=_rule("length"),
              help="Characters to generate after the prime (at most; see --stop).")
@click.option("-t", "--temperature", type=float, default=0.8, show_default=True, callback=_rule("temperature"),
              help="Below 1: safer, more repetitive text; above 1: more surprising text.")
@click.option("-k", "--top-k", type=int, callback=_rule("top_k"),
              help="Draw only from the K most likely characters at each step.")
@click.option("--top-p", type=float, callback=_rule("top_p"),
              help="Draw only from the fewest most likely characters whose probability reaches P "
                   "(nucleus sampling; applied after temperature and --top-k).")
@click.option("-p", "--prime", default="", help="Text to start from; printed before the sample.")
@click.option("--seed", type=int, callback=_rule("seed"),
              help="Seed for reproducible samples (default: random, shown on stderr).")
@click.option("--argmax", is_flag=True,
              help="Always take the most likely character (no randomness; ignores -t, -k, --top-p).")
@click.option("--num-samples", type=int, default=1, show_default=True, callback=_rule("num_samples"),
              help="Generate N samples together, printed one after another, each headed by its own seed.")
@click.option("--stop", multiple=True,
              help="End a sample where it produces this text (kept). Repeatable; \\n, \\t, \\\\ are understood.")
@click.option("--stream", is_flag=True,
              help="Write each character as soon as it is generated (always so when stdout is a terminal).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per sample: sample, seed, text, generated, stop, settings.")
@user_errors
def sample(checkpoint, length, temperature, top_k, top_p, prime, seed, argmax, num_samples, stop, stream,
           as_json):
    """Generate text from a trained checkpoint.

    Sample 1 uses --seed itself; every sample's own seed, shown in its header and
    in --json, reproduces it alone. Ctrl-C stops, keeping what was printed.

    \b
    Example:
      charrnn sample runs/shakespeare/best.safetensors --temperature 0.8 --prime "ROMEO:"
      charrnn sample CKPT --top-p 0.9 --num-samples 5 --stop "\\n\\n" --seed 7
    """
    import secrets

    from charrnn.sample import BatchSampler, Decoding, write_samples

    ckpt, net = _load_network(checkpoint)
    chosen = seed is None
    if chosen:
        seed = secrets.randbelow(2**31)
    stops = [_unescape(s) for s in stop]
    sampler = BatchSampler(net, ckpt.vocab, length, seed, num_samples, prime,
                           Decoding(temperature, top_k, top_p, argmax), stops)  # refuses bad input
    if chosen and sampler.uses_randomness:
        err(f"seed: {seed}")
    settings = None
    if as_json:
        settings = {"checkpoint": checkpoint, "length": length, "temperature": temperature, "top_k": top_k,
                    "top_p": top_p, "argmax": argmax, "prime": prime, "stop": stops,
                    "num_samples": num_samples, "seed": seed}
    write_samples(sampler, sys.stdout, settings, stream=stream or sys.stdout.isatty())


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("texts", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of sentences.")
@click.option("--skip-unknown", is_flag=True,
              help="Drop characters that are not in the model's vocabulary (counted on stderr) "
                   "instead of refusing the file.")
@click.option("--novelty", is_flag=True,
              help="Also report the fraction of each text's 20- and 40-character runs that do not occur "
                   "verbatim in --train.")
@click.option("--train", "train_corpus", type=click.Path(), help="The training corpus that --novelty compares with.")
@user_errors
def evaluate(checkpoint, texts, as_json, skip_unknown, novelty, train_corpus):
    """Score text files: mean cross-entropy of each character given all before it.

    Prints nats/char, bits/char and perplexity for each file (one stream from a zero
    state), and their total when there are several. '-' reads standard input.

    \b
    Example:
      charrnn evaluate runs/shakespeare/best.safetensors held_out.txt --json
      charrnn sample CKPT -n 5000 | charrnn evaluate CKPT - --novelty --train corpus.txt
    """
    from charrnn.data import check_text_file
    from charrnn.evaluate import STDIN, evaluate_texts, load_text
    from charrnn.vocab import UnknownCharactersError, describe_chars

    if novelty and train_corpus is None:
        raise click.UsageError("--novelty needs --train CORPUS, the text to compare with")
    if train_corpus is not None and not novelty:
        raise click.UsageError("--train is only used with --novelty")
    if texts.count(STDIN) > 1:
        raise CharrnnError("standard input ('-') can be read only once")
    ckpt, net = _load_network(checkpoint)
    if novelty:
        try:
            check_text_file(train_corpus)
        except CharrnnError as e:
            raise CharrnnError(f"--train {e}") from None
    loaded = []
    for source in texts:
        try:
            text = load_text(source, ckpt.vocab, skip_unknown, with_code_points=novelty)
        except UnknownCharactersError as e:
            raise CharrnnError(f"{e}; pass --skip-unknown to score the rest") from None
        if text.ids.size < 2:
            left = f" once {text.skipped:,} unknown ones are skipped" if text.skipped else ""
            raise CharrnnError(f"{text.name} has fewer than 2 characters{left}: nothing to predict")
        loaded.append(text)
    several = len(loaded) > 1
    for text in loaded:
        if text.skipped:
            err(f"{text.name + ': ' if several else ''}skipped {text.skipped:,} characters not in the "
                f"vocabulary: {describe_chars(text.unknown)}")
    result = evaluate_texts(net, loaded, train_corpus if novelty else None)
    if skip_unknown:
        for report, text in zip(result["files"], loaded):
            report["skipped"] = text.skipped
        result["total"]["skipped"] = sum(t.skipped for t in loaded)
    if as_json:
        if not several:
            result = {k: v for k, v in result["files"][0].items() if k != "file"}
        click.echo(json.dumps(result))
        return
    for report in result["files"]:
        click.echo(f"{report['file'] + ': ' if several else ''}{_score_line(report, train_corpus)}")
    if several:
        click.echo(f"total: {_score_line(result['total'], train_corpus, f' in {len(loaded)} files')}")


def _score_line(report: dict, train_corpus, where: str = "") -> str:
    line = (f"{report['nats_per_char']:.4f} nats/char, {report['bits_per_char']:.4f} bits/char, "
            f"perplexity {report['perplexity']:.3f} over {report['chars']:,} characters{where}")
    if "novelty" in report:
        parts = [f"no {n}-grams (shorter than {n} characters)" if f is None else f"{100 * f:.1f}% of {n}-grams"
                 for n, f in report["novelty"].items()]
        line += f"; not in {train_corpus}: " + ", ".join(parts)
    return line


@cli.command()
@click.argument("path", metavar="CKPT_OR_RUN_DIR", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def info(path, as_json):
    """Describe a checkpoint or a run directory: model, vocabulary, training progress, settings.

    For a run directory (its last.safetensors), also the validation loss of every
    evaluation as a small chart.

    \b
    Example:
      charrnn info runs/shakespeare
      charrnn info runs/shakespeare/best.safetensors --json
    """
    from charrnn.info import describe, format_text

    described = describe(path)
    click.echo(json.dumps(described) if as_json else format_text(described))


def main():
    cli(prog_name="charrnn")
