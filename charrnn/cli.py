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
from charrnn.config import (ModelConfig, SampleConfig, ServeConfig, Setting, TrainConfig, parse_duration,
                            parse_steps_or_duration, render_help, settings_of)
from charrnn.errors import CharrnnError, SettingError, as_flag, render

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Duration(click.ParamType):
    """A time span: 90, 90s, 5m, 1.5h, 1h30m (see config.parse_duration)."""

    name = "duration"
    parse = staticmethod(parse_duration)

    def convert(self, value, param, ctx):
        try:
            return self.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class StepsOrDuration(Duration):
    """A number of steps (500) or a time span with its unit (90s, 1m); see
    config.parse_steps_or_duration."""

    name = "steps-or-duration"
    parse = staticmethod(parse_steps_or_duration)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ in a flag's value as the characters they name; any other
    backslash stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


_CLICK_TYPES = {"int": click.INT, "float": click.FLOAT, "duration": Duration(),
                "steps-or-duration": StepsOrDuration(), "text": click.STRING, "chars": click.STRING,
                "texts": click.STRING, "path": click.Path()}


def flag(name: str) -> str:
    return as_flag(name, None)


def setting_options(cls, check_early: bool = False):
    """Click options for the command-line settings of a config class, in field order,
    each named, typed, described and with the default shown as config.py defines it.
    An option not given is None (an empty tuple for a repeatable one), so that the
    library can tell what the user chose. check_early: refuse a value breaking its
    rule as a usage error (exit status 2) instead of leaving that to the library."""

    def decorate(command):
        for s in reversed([s for s in settings_of(cls).values() if s.cli]):
            command = _option(s, check_early)(command)
        return command

    return decorate


def _option(s: Setting, check_early: bool):
    text = render_help(s.help, flag)
    shown = s.shown_default()
    if shown is not None:
        text += f"  [default: {shown}]"
    kwargs = dict(help=text, default=None)
    if s.env:
        kwargs.update(envvar=s.env, show_envvar=True)
    if s.kind == "flag":
        kwargs["is_flag"] = True
    elif s.kind == "choice":
        kwargs["type"] = click.Choice(s.choices)
    else:
        kwargs["type"] = _CLICK_TYPES[s.kind]
    if s.kind == "texts":
        kwargs["multiple"] = True

    def convert(ctx, param, value):
        if s.kind == "texts":
            value = tuple(_unescape(v) for v in value)
        elif s.kind == "chars" and value is not None:
            value = _unescape(value)
        if check_early and value is not None:
            try:
                s.check(value)
            except SettingError as e:
                raise click.BadParameter(f"must be {e.requirement}, got {e.value!r}", ctx, param) from None
        return value

    return click.option(*([s.short] if s.short else []), flag(s.name), s.name, callback=convert, **kwargs)


def given(values: dict) -> dict:
    """The settings among a command's values that the user gave."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


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
            raise click.ClickException(render(e.message, as_flag)) from None
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


def _show_version(ctx, param, value):
    """--version: the version, and which engine would run: the vector instruction set
    it is built for (charrnn.isa) and the threads it uses. Imports Numba (for its
    thread count) but compiles nothing."""
    if not value or ctx.resilient_parsing:
        return
    from charrnn import isa

    try:
        active = isa.active()
    except CharrnnError as e:
        raise click.ClickException(render(e.message, as_flag)) from None
    import numba

    n = numba.config.NUMBA_NUM_THREADS
    click.echo(f"charrnn {__version__}, engine {active.describe()}, {active.describe_bf16()}, "
               f"{n} thread{'s' if n != 1 else ''}")
    ctx.exit()


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version, the engine's instruction set and thread count, and exit.")
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
@click.option("--out", required=True, type=click.Path(),
              help="Run directory: receives last.safetensors, best.safetensors and metrics.jsonl.")
@click.option("--vocab", type=click.Path(), help="Use this vocabulary (from `charrnn vocab`).")
@setting_options(ModelConfig)
@setting_options(TrainConfig)
@click.option("--resume", type=click.Path(), help="Continue training from this checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start a new run even if --out already holds one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@user_errors
def train(corpus, out, vocab, resume, overwrite, quiet, **settings):
    """Train a model on a UTF-8 text file.

    Without a budget (--max-steps, --max-epochs or --max-time) it trains for 5 minutes.
    Given none of --cell, --layers, --hidden, --embed, --dropout, --batch-size,
    --seq-len, --lr, --ema, --weight-decay, --weight-drop and --locked-dropout, it
    chooses them for the budget, the corpus and this machine (and says what it
    chose); given any one, the others take the defaults shown below.

    \b
    Example:
      charrnn train corpus.txt --out runs/mine --max-time 10m
    """
    from charrnn.api import trainer as make_trainer

    trainer = make_trainer(corpus, out, vocab, resume, overwrite, not quiet, **given(settings))
    try:
        summary = trainer.run()
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: stopped at once, mid-step or mid-write
        err(f"interrupted; the files in {out} are complete, as of the last save")
        sys.exit(_signal_status(trainer.stop_signal))
    best = summary["best_val_loss"]
    best_text = "n/a" if best is None else f"{best:.4f} nats/char (step {summary['best_step']})"
    if summary["interrupted"] and not summary["stopped_by"]:  # a budget spent ends as done, signal or not
        how = "terminated (SIGTERM)" if summary["signal"] == signal.SIGTERM else "interrupted"
        if summary["trained"] and not summary["validated"]:
            err(f"{how} at step {summary['step']}; saved {summary['last']} "
                f"(not validated; best.safetensors untouched); continue with --resume {summary['last']}")
        elif summary["trained"]:  # during an evaluation, which ended with its files written
            err(f"{how} at step {summary['step']}; saved {summary['last']} at its evaluation (best validation "
                f"loss {best_text}); continue with --resume {summary['last']}")
        else:
            err(f"{how} at step {summary['step']} before any training step; nothing was written")
        sys.exit(_signal_status(summary["signal"]))
    early = f"stopped early by {render(summary['stopped_by'], as_flag)}; " if summary["patience_stop"] else ""
    err(f"done: {summary['step']} steps in {summary['elapsed']:.0f}s; {early}best validation loss {best_text}; "
        f"saved {summary['last']} and {summary['best']}")
    if summary["overfitting"]:
        err(f"note: {summary['overfitting']}: best.safetensors holds the best model; more --dropout or a smaller "
            f"model would suit this budget better")


@cli.command()
@click.argument("checkpoint", type=click.Path())
@setting_options(SampleConfig, check_early=True)
@click.option("--stream", is_flag=True,
              help="Write each character as soon as it is generated (always so when stdout is a terminal).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per sample: sample, seed, text, generated, stop, settings.")
@user_errors
def sample(checkpoint, stream, as_json, **settings):
    """Generate text from a trained checkpoint.

    Sample 1 uses --seed itself; every sample's own seed, shown in its header and
    in --json, reproduces it alone. Ctrl-C stops, keeping what was printed.

    \b
    Example:
      charrnn sample runs/shakespeare/best.safetensors --temperature 0.8 --prime "ROMEO:"
      charrnn sample CKPT --top-p 0.9 --num-samples 5 --stop "\\n\\n" --seed 7
    """
    from charrnn.api import load
    from charrnn.sample import write_samples

    values = given(settings)
    model = load(checkpoint)
    cfg = model.settings(**values)
    sampler = model.sampler(cfg)  # refuses bad input
    if "seed" not in values and sampler.uses_randomness:
        err(f"seed: {cfg.seed}")
    record = {"checkpoint": checkpoint, **cfg.to_dict()} if as_json else None
    if cfg.unique:
        sampler.prepare()
    sources = write_samples(sampler, sys.stdout, record, stream=stream or sys.stdout.isatty(),
                            source=model.source if model.lines else None)
    if sources and len(sources) > 1:
        counts = {where: sources.count(where) for where in ("train", "val", "new")}
        err(f"{len(sources)} samples: {counts['train']} training lines, {counts['val']} validation lines, "
            f"{counts['new']} new")
    if cfg.unique and sampler.shortfall:
        err(f"note: only {len(sampler.seeds)} distinct new lines in {sampler.drawn:,} draws: the model mostly "
            f"repeats lines it has seen; a higher --temperature may find more")


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("texts", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of sentences.")
@click.option("--per-line", is_flag=True,
              help="Score each line of the text: its line number, nats, nats per character and text, tab-separated "
                   "(with --json, one object per line: line, text, nats, nats_per_char).")
@click.option("--skip-unknown", is_flag=True,
              help="Drop characters that are not in the model's vocabulary (counted on stderr) "
                   "instead of refusing the file.")
@click.option("--novelty", is_flag=True,
              help="Also report the fraction of each text's 20- and 40-character runs that do not occur "
                   "verbatim in --train.")
@click.option("--train", "train_corpus", type=click.Path(), help="The training corpus that --novelty compares with.")
@user_errors
def evaluate(checkpoint, texts, as_json, per_line, skip_unknown, novelty, train_corpus):
    """Score text files: mean cross-entropy of each character given all before it.

    Prints nats/char (with its standard error), bits/char and perplexity for each file
    (one stream from a zero state; for a line-mode model, each line on its own), and
    their total when there are several. '-' reads standard input.

    \b
    Example:
      charrnn evaluate runs/shakespeare/best.safetensors held_out.txt --json
      charrnn evaluate runs/names/best.safetensors candidates.txt --per-line | sort -t$'\\t' -k3 -g
      charrnn sample CKPT -n 5000 | charrnn evaluate CKPT - --novelty --train corpus.txt
    """
    from charrnn.data import check_text_file
    from charrnn.evaluate import STDIN, evaluate_texts
    from charrnn.vocab import describe_chars

    if novelty and train_corpus is None:
        raise click.UsageError("--novelty needs --train CORPUS, the text to compare with")
    if train_corpus is not None and not novelty:
        raise click.UsageError("--train is only used with --novelty")
    if per_line and novelty:
        raise click.UsageError("--novelty reports on whole files, not with --per-line")
    if texts.count(STDIN) > 1:
        raise CharrnnError("standard input ('-') can be read only once")
    from charrnn.api import load

    model = load(checkpoint)
    vocab = model.checkpoint.vocab
    if novelty:
        try:
            check_text_file(train_corpus)
        except CharrnnError as e:
            raise CharrnnError(f"--train {e}") from None
    loaded = [_text_to_score(source, vocab, skip_unknown, novelty, model.lines) for source in texts]
    several = len(loaded) > 1
    for text in loaded:
        if text.skipped:
            err(f"{text.name + ': ' if several else ''}skipped {text.skipped:,} characters not in the "
                f"vocabulary: {describe_chars(text.unknown)}")
    result = evaluate_texts(model.network, loaded, train_corpus if novelty else None, model.end_id, model.lines,
                            model.cr_id)
    if per_line:
        _print_lines(loaded, result["scored"], vocab, as_json, several)
        return
    del result["scored"]
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


def _text_to_score(source, vocab, skip_unknown: bool, novelty: bool, lines: bool):
    from charrnn.evaluate import load_text
    from charrnn.vocab import UnknownCharactersError

    try:
        text = load_text(source, vocab, skip_unknown, with_code_points=novelty)
    except UnknownCharactersError as e:
        raise CharrnnError(f"{e}; pass --skip-unknown to score the rest") from None
    left = f" once {text.skipped:,} unknown ones are skipped" if text.skipped else ""
    if lines and not (text.ids != vocab.chars.index("\n")).any():
        raise CharrnnError(f"{text.name} has no line with characters{left}: nothing to score")
    if not lines and text.ids.size < 2:
        raise CharrnnError(f"{text.name} has fewer than 2 characters{left}: nothing to predict")
    return text


def _print_lines(texts, scored, vocab, as_json: bool, several: bool) -> None:
    """--per-line: one record per line of every text."""
    for text, s in zip(texts, scored):
        for number, (a, b, nats, count) in enumerate(s.lines, start=1):
            line = vocab.decode(text.ids[a:b])
            per_char = nats / count if count else None
            if as_json:
                record = {"line": number, "text": line, "nats": nats, "nats_per_char": per_char}
                click.echo(json.dumps({"file": text.name, **record} if several else record, ensure_ascii=False))
            else:
                shown = line.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r")
                cells = ([text.name] if several else []) + [str(number), f"{nats:.6f}",
                                                             "" if per_char is None else f"{per_char:.6f}", shown]
                click.echo("\t".join(cells))


def _score_line(report: dict, train_corpus, where: str = "") -> str:
    stderr = report.get("nats_per_char_stderr")
    line = (f"{report['nats_per_char']:.4f}{'' if stderr is None else f' ± {stderr:.4f}'} nats/char, "
            f"{report['bits_per_char']:.4f} bits/char, "
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


@cli.command()
@click.argument("checkpoint", type=click.Path())
@setting_options(ServeConfig, check_early=True)
@user_errors
def serve(checkpoint, **settings):
    """Serve a checkpoint over HTTP: an OpenAI-compatible completions API, scoring,
    health, Prometheus metrics and a web playground at /.

    Requests are generated together (continuous batching); each gives the text it
    gives alone, the same as `charrnn sample` with the same seed. Ctrl-C or SIGTERM
    stops the server. Needs the extra: pip install 'charrnn[serve]'.

    \b
    Example:
      charrnn serve runs/shakespeare/best.safetensors --port 8000
      curl localhost:8000/v1/completions -d '{"prompt": "ROMEO:", "max_tokens": 200}'
    """
    from charrnn.serve import missing_dependencies

    missing = missing_dependencies()
    if missing:
        raise click.ClickException(missing)
    from charrnn.serve.main import main as serve_main

    serve_main(checkpoint, ServeConfig(**given(settings)))


def main():
    cli(prog_name="charrnn")
