"""Train the bundled demo model: a byte-level BPE tokenizer and a small GPT-2 with ReLU MLPs.

Trained on the ``train`` split of the demo corpora (Python standard library code
and the English prose of its docstrings and comments), half of each batch from
each domain. Runs on a CPU; the defaults (30 M tokens) take about 90 minutes on two
cores.

``--extra DIR ...`` adds the Python files under each directory (for example
unpacked wheels of pure-Python packages from the package index), cut into code and
prose the same way; test folders, vendored copies and the packages of the demo's
outside evaluation set are skipped, so that set stays unseen.

``--prose-docs DIR ...`` adds English prose from the reStructuredText pages under each
directory (for example the Python documentation's sources), cut with
``rst_prose.py`` (beside this script); the C API pages and include snippets are skipped, and
so is every paragraph that shares a run of eight words with an evaluation split.

``--init DIR`` continues training a saved model (its weights and tokenizer) for
``--tokens`` more tokens, with a fresh optimiser and learning-rate schedule.

Usage::

    python scripts/train_demo_model.py [--out unlearn_lens/demo/model] [--tokens 30000000] [--extra DIR ...]

Writes ``config.json``, ``model.safetensors``, the tokenizer files and a model
card ``README.md`` (data, token count, steps, time, held-out loss and top-1 per
domain) to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from rst_prose import rst_prose  # scripts/rst_prose.py, beside this script
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from unlearn_lens.demo import DEMO_DOMAINS, PINNED_DIR, PINNED_SPLITS, demo_texts, pinned_rows, split_source

EOS = "<|endoftext|>"
# the demo's outside evaluation set (scripts/build_outside_corpus.py): never trained on
OUTSIDE = {"jinja2", "click", "idna", "urllib3", "packaging", "attrs", "attr", "filelock"}
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "vendored", "_vendored", "__pycache__"} | OUTSIDE


def extra_texts(folders: list[str]) -> tuple[list[str], list[str], list[dict]]:
    """Code and prose of every Python file under ``folders`` (sorted paths), and a record per folder."""
    code, prose, record = [], [], []
    for folder in folders:
        root = Path(folder)
        n_files = n_code = n_prose = skipped = 0
        for path in sorted(root.rglob("*.py")):
            parts = set(path.relative_to(root).parts[:-1])
            if parts & SKIP_DIRS or path.name.startswith("test_"):
                continue
            try:
                c, p = split_source(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                skipped += 1
                continue
            n_files += 1
            if c.strip():
                code.append(c)
                n_code += len(c)
            if p.strip():
                prose.append(p)
                n_prose += len(p)
        record.append(
            {"folder": root.name, "files": n_files, "skipped": skipped, "code_chars": n_code, "prose_chars": n_prose}
        )
    return code, prose, record


# every shipped evaluation split (domain, part), in the order the model card lists them
EVALUATION_SPLITS = [(d, p) for d in DEMO_DOMAINS for p in PINNED_SPLITS] + [(d, "outside") for d in DEMO_DOMAINS]
SKIP_DOC_DIRS = {"c-api", "includes"}
_WORDS = re.compile(r"\w+")
SHARED_RUN = 8  # a paragraph sharing this many consecutive words with an evaluation text is dropped


def word_runs(text: str, n: int = SHARED_RUN) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (lower-cased)."""
    words = _WORDS.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def docs_prose(folders: list[str]) -> tuple[list[str], list[dict]]:
    """The prose of every reST page under ``folders`` (sorted paths), and a record per folder.

    Paragraphs that share a run of :data:`SHARED_RUN` words with any text of the pinned
    evaluation splits (validation, test, outside; both domains) are dropped, so that
    no evaluation text is trained on.
    """
    if not folders:
        return [], []
    evaluation = set()
    for domain, part in EVALUATION_SPLITS:
        for row in pinned_rows(domain, part):
            evaluation |= word_runs(row["text"])
    texts, record = [], []
    for folder in folders:
        root = Path(folder)
        n_files = n_chars = n_dropped = 0
        for path in sorted(root.rglob("*")):
            if not path.name.endswith((".rst", ".rst.txt")) or set(path.relative_to(root).parts[:-1]) & SKIP_DOC_DIRS:
                continue
            kept = []
            for paragraph in rst_prose(path.read_text(encoding="utf-8")).split("\n\n"):
                if paragraph and word_runs(paragraph) & evaluation:
                    n_dropped += 1
                elif paragraph:
                    kept.append(paragraph)
            if kept:
                texts.append("\n\n".join(kept))
                n_files += 1
                n_chars += len(texts[-1])
        record.append({"folder": root.name, "files": n_files, "prose_chars": n_chars, "dropped_paragraphs": n_dropped})
    return texts, record


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=1024
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All texts tokenised and concatenated, each followed by EOS. Shape ``[n_tokens]``."""
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def sample_rows(stream: torch.Tensor, n: int, seq_len: int, bos: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``seq_len - 1`` tokens, each after a BOS token. Shape ``[n, seq_len]``."""
    starts = torch.randint(0, len(stream) - seq_len, (n,), generator=gen)
    rows = torch.stack([stream[s : s + seq_len - 1] for s in starts.tolist()])
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)


@torch.no_grad()
def heldout_metrics(model: GPT2LMHeadModel, stream: torch.Tensor, seq_len: int, bos: int, n_tokens: int) -> dict:
    """Loss and top-1 on consecutive held-out windows (the BOS prediction excluded)."""
    model.eval()
    body = seq_len - 1
    n_rows = min(n_tokens // body, len(stream) // body)
    rows = stream[: n_rows * body].view(n_rows, body)
    rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)
    total_loss, correct, count = 0.0, 0, 0
    for batch in rows.split(32):
        logits = model(batch).logits[:, 1:-1]
        target = batch[:, 2:]
        total_loss += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        ).item()
        correct += (logits.argmax(-1) == target).sum().item()
        count += target.numel()
    model.train()
    return {"loss": total_loss / count, "top1": correct / count, "n_tokens": count}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets" / "demo-model"))
    parser.add_argument("--tokens", type=int, default=30_000_000, help="training tokens in all")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-mlp", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--act", default="relu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (for a quick timing check)")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="DIR",
        help="more Python sources to train on (code and prose cut as for the standard library)",
    )
    parser.add_argument(
        "--prose-docs",
        nargs="*",
        default=[],
        metavar="DIR",
        help="reStructuredText pages whose English prose is added to the prose training text",
    )
    parser.add_argument(
        "--prose-docs-about",
        default="",
        metavar="TEXT",
        help="what the --prose-docs pages are and their licence, for the model card",
    )
    parser.add_argument(
        "--init",
        default=None,
        metavar="DIR",
        help="continue from the model and tokenizer in DIR (a fresh optimiser and learning-rate "
        "schedule; the architecture arguments are then ignored)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-measure the held-out metrics of the model in --out and rewrite its card",
    )
    return parser


# what the card's command line writes for an argument that names a folder
PLACEHOLDERS = {"init": "BASE", "extra": "DIR", "prose_docs": "DOCS"}
NOT_IN_COMMAND = {"out", "threads", "max_steps", "evaluate_only", "prose_docs_about"}


def command_line(args: dict) -> str:
    """The command that trains with ``args`` (the recorded ``training.json`` arguments), defaults left out."""
    defaults = vars(build_parser().parse_args([]))
    words = ["python scripts/train_demo_model.py"]
    for name, value in args.items():
        if name in NOT_IN_COMMAND or name not in defaults or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            value = " ".join(PLACEHOLDERS[name] for _ in value)
        words.append(f"{flag} {PLACEHOLDERS.get(name, value)}")
    return " ".join(words)


def init_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """The saved model of ``--init``, its shape recorded in ``args`` as the shape trained."""
    model = GPT2LMHeadModel.from_pretrained(args.init)
    c = model.config
    if c.n_positions != args.seq_len:
        raise SystemExit(f"--init model has context {c.n_positions}, not --seq-len {args.seq_len}")
    args.layers, args.d_model, args.d_mlp, args.heads = c.n_layer, c.n_embd, c.n_inner, c.n_head
    args.act, args.vocab = c.activation_function, len(tokenizer)
    return model


def new_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised model of the shape in ``args``."""
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=args.seq_len,
            n_embd=args.d_model,
            n_layer=args.layers,
            n_head=args.heads,
            n_inner=args.d_mlp,
            activation_function=args.act,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
    )


def main() -> None:
    args = build_parser().parse_args()

    torch.set_num_threads(args.threads)
    if args.evaluate_only:
        evaluate_only(Path(args.out), args.seq_len)
        return
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.time()

    code_train, prose_train = demo_texts("code", "train"), demo_texts("prose", "train")
    extra_code, extra_prose, extra_record = extra_texts(args.extra)
    code_train, prose_train = code_train + extra_code, prose_train + extra_prose
    for rec in extra_record:
        print(
            f"extra {rec['folder']}: {rec['files']} files, code {rec['code_chars']:,} chars, "
            f"prose {rec['prose_chars']:,} chars ({rec['skipped']} did not parse)",
            flush=True,
        )
    doc_prose, docs_record = docs_prose(args.prose_docs)
    prose_train = prose_train + doc_prose
    for rec in docs_record:
        print(
            f"prose docs {rec['folder']}: {rec['files']} pages, {rec['prose_chars']:,} chars "
            f"({rec['dropped_paragraphs']} paragraphs dropped: shared with an evaluation text)",
            flush=True,
        )
    init = json.loads((Path(args.init) / "training.json").read_text()) if args.init else None
    if init:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.init)
    else:
        tokenizer = train_tokenizer(code_train + prose_train, args.vocab)
    bos = tokenizer.bos_token_id
    streams = {"code": token_stream(tokenizer, code_train), "prose": token_stream(tokenizer, prose_train)}
    heldout = {d: token_stream(tokenizer, demo_texts(d, "heldout")) for d in ("code", "prose")}
    print(
        f"tokenizer: vocab {len(tokenizer)}; "
        f"train tokens code {len(streams['code']):,} prose {len(streams['prose']):,};"
        f" held-out code {len(heldout['code']):,} prose {len(heldout['prose']):,} ({time.time() - t0:.0f}s)",
        flush=True,
    )

    model = init_model(args, tokenizer) if init else new_model(args, tokenizer)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    steps = args.tokens // (args.batch * args.seq_len)
    if args.max_steps:
        steps = min(steps, args.max_steps)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(args.seed)
    half = args.batch // 2
    t_train = time.time()
    running = None
    for step in range(steps):
        batch = torch.cat(
            [
                sample_rows(streams["code"], half, args.seq_len, bos, gen),
                sample_rows(streams["prose"], args.batch - half, args.seq_len, bos, gen),
            ]
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        out = model(batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = out.loss.item() if running is None else 0.98 * running + 0.02 * out.loss.item()
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) * args.batch * args.seq_len / (time.time() - t_train)
            print(f"step {step:5d}/{steps}  loss {running:.3f}  lr {lr_at(step):.2e}  {rate:,.0f} tok/s", flush=True)
    train_seconds = time.time() - t_train

    metrics = {d: heldout_metrics(model, heldout[d], args.seq_len, bos, 40_000) for d in ("code", "prose")}
    print("held-out:", json.dumps(metrics), flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "params": n_params,
        "steps": steps,
        "train_tokens": steps * args.batch * args.seq_len,
        "train_seconds": round(train_seconds),
        "threads": args.threads,
        "heldout": metrics,
        "args": vars(args),
        "corpus_tokens": {d: len(s) for d, s in streams.items()},
        "extra_sources": extra_record,
        "prose_docs": docs_record,
        "init": {
            "dir": args.init,
            "command": command_line(init["args"]),
            "train_tokens": init["train_tokens"],
            "steps": init["steps"],
            "train_seconds": init["train_seconds"],
        }
        if init
        else None,
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(info))
    print(f"saved to {out_dir} in {time.time() - t0:.0f}s", flush=True)


def evaluate_only(out_dir: Path, seq_len: int) -> None:
    """Recompute the held-out metrics of a saved model on the current held-out split."""
    model = GPT2LMHeadModel.from_pretrained(out_dir).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out_dir)
    info = json.loads((out_dir / "training.json").read_text())
    heldout = {d: token_stream(tokenizer, demo_texts(d, "heldout")) for d in ("code", "prose")}
    info["heldout"] = {
        d: heldout_metrics(model, heldout[d], seq_len, tokenizer.bos_token_id, 40_000) for d in ("code", "prose")
    }
    print("held-out:", json.dumps(info["heldout"]), flush=True)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(info))


def model_card(info: dict) -> str:
    a, h = info["args"], info["heldout"]
    extra = info.get("extra_sources") or []
    extra_row = (
        (
            "| more data | Python files of "
            + ", ".join(f"{r['folder']} ({r['files']} files)" for r in extra)
            + ", cut the same way; the tokens above include them |\n"
        )
        if extra
        else ""
    )
    docs = info.get("prose_docs") or []
    docs_row = (
        (
            "| more prose | the English prose of the reStructuredText pages under "
            + ", ".join(
                f"{r['folder']} ({r['files']} pages, {r['prose_chars']:,} characters; "
                f"{r['dropped_paragraphs']} paragraphs sharing a run of {SHARED_RUN} words with an evaluation text "
                "dropped)"
                for r in docs
            )
            + (f": {a['prose_docs_about']}" if a.get("prose_docs_about") else "")
            + " |\n"
        )
        if docs
        else ""
    )
    init = info.get("init")
    init_row = (
        (
            f"| initialised from | a model of this shape trained on {init['train_tokens']:,} tokens "
            f"({init['steps']:,} steps, {init['train_seconds'] / 60:.1f} minutes), "
            "then trained further as below (`--init`) |\n"
        )
        if init
        else ""
    )
    reproduce = f"`{command_line(a)}`"
    if init:
        reproduce = f"`{init['command']} --out BASE`, then {reproduce}"
    if docs:
        reproduce += ", with DOCS the reStructuredText sources named above"
    architecture = (
        f"GPT-2 (`GPT2LMHeadModel`), {a['layers']} layers, d_model {a['d_model']}, d_mlp {a['d_mlp']}, "
        f"{a['heads']} heads, context {a['seq_len']}, tied embeddings"
    )
    data = (
        "the `train` split of the demo corpora (`unlearn_lens.demo`): Python standard library code without "
        f"comments and docstrings ({info['corpus_tokens']['code']:,} tokens), and the English prose of those "
        f"docstrings and comments ({info['corpus_tokens']['prose']:,} tokens"
        f"{' with the pages below' if docs else ''})"
    )
    batches = f"{a['batch']} rows of {a['seq_len']} tokens (BOS + a random window), half code and half prose"
    training = (
        f"{info['steps']:,} steps, {info['train_tokens']:,} tokens, AdamW (lr {a['lr']}, betas 0.9/0.95, "
        f"weight decay 0.1), {a['warmup']} warm-up steps then cosine to 10 %, seed {a['seed']}"
    )
    return f"""# unlearn_lens demo model

A small GPT-2-architecture causal language model with **{a["act"].upper()} MLPs**, trained
from scratch by `scripts/train_demo_model.py` so that the selective-pruning demo runs
offline. It is a toy: good enough at both of its domains to show that code-specific
neurons can be removed while prose survives, and nothing more.

| | |
|---|---|
| architecture | {architecture} |
| parameters | {info["params"]:,} |
| tokenizer | byte-level BPE (`tokenizers`), vocabulary {a["vocab"]}, `<|endoftext|>` as BOS/EOS |
| data | {data} |
{extra_row}{docs_row}{init_row}| batches | {batches} |
| training | {training} |
| time | {info["train_seconds"] / 60:.1f} minutes on {info["threads"]} CPU threads |

Held-out ({h["code"]["n_tokens"]:,} code tokens, {h["prose"]["n_tokens"]:,} prose tokens from files never trained on):

| domain | loss | top-1 |
|---|---|---|
| code | {h["code"]["loss"]:.3f} | {h["code"]["top1"]:.3f} |
| prose | {h["prose"]["loss"]:.3f} | {h["prose"]["top1"]:.3f} |

Reproduce: {reproduce} (the numbers above are in `training.json`).

{evaluation_texts_section()}"""


def evaluation_texts_section() -> str:
    """The card's account of the shipped evaluation splits, with the SHA-256 of each (uncompressed JSON lines)."""
    rows = []
    for domain, part in EVALUATION_SPLITS:
        name = f"{domain}-{part}.jsonl.gz"
        with gzip.open(PINNED_DIR / name, "rb") as f:
            lines = f.read()
        n_files = lines.count(b"\n")  # one JSON line per file
        rows.append(f"| `unlearn_lens/demo/data/{name}` | {n_files} | `{hashlib.sha256(lines).hexdigest()}` |")
    table = "\n".join(rows)
    return f"""## Evaluation texts

The held-out files (one standard library file in ten, by a hash of its path, of
CPython 3.11.7, the interpreter the model was trained with) are shipped with the
package, split in two by another hash of the path, so that they are the same on every
Python version: `validation` (the demo's settings are chosen on it) and `test` (the
demo reports it). `python scripts/pin_demo_corpus.py` wrote them; `tests/test_demo_corpus.py`
checks these SHA-256 sums of the uncompressed JSON lines:

| split file | files | SHA-256 |
|---|---|---|
{table}

The validation and test texts are the Python Software Foundation's, under the PSF
License Agreement (Python 3.11.7), as the rest of the standard library. The `outside`
split (`python scripts/build_outside_corpus.py`) is a second evaluation set from
sources the model never saw: code and docstring/comment prose of jinja2 3.1.6, click
8.5.1, idna 3.20, urllib3 2.8.0, packaging 26.4, attrs 26.1.0 and filelock 4.3.1 (BSD,
MIT and Apache licences; each package's licence is in `unlearn_lens/demo/data/LICENSES/`),
split exactly as the demo corpora are. The `train` split is rebuilt from
the running interpreter's standard library, so it matches the training data exactly
only under CPython 3.11.7.
"""


if __name__ == "__main__":
    main()
