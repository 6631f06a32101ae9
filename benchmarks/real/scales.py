"""How large are the methods' perturbations next to the encoder's own cross-language differences?

``python -m benchmarks.real.scales [--model DIR] [--task DIR] [--n 200]`` prints (and writes
``scales.json`` next to the task) three groups of numbers for the converted encoder:

1. **The unit.** The entry RMS of the input-embedding table (the unit of ``relative`` scales),
   the mean L2 norm of a token row, the mean number of real tokens of a training pair; from them,
   what a relative scale means per token: RS-RP with ``sigma`` adds noise of L2 norm
   ``sigma * rms * sqrt(H)`` to *every* token; PGD's L2 ball of radius ``eps * rms`` is shared by
   the *whole* pair, so a token moves by ``eps * rms / sqrt(n)`` on average.
2. **The cross-language difference, layer by layer.** For parallel test sentences (synopses and
   paragraphs) in English and language X, mean-pooled over real tokens at the word-embedding
   lookup, after the embedding LayerNorm and after every encoder layer: the distance between a
   sentence and its translation, between two different English sentences, and the norm of the
   *common* shift ``mean_i h_X(i) - mean_i h_en(i)`` (the language offset), each divided by the
   RMS of that layer's entries times sqrt(H) (the typical norm of a vector there).
3. The same ratios for RS-RP's and PGD's perturbations at the configured scales, so the two can be
   read side by side.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.real import paths
from fastrobust.fileio import atomic_write_json


def _rows(path: Path) -> list[tuple[str, str, int]]:
    return [
        (a, b, int(c)) for a, b, c in (ln.split("\t") for ln in path.read_text(encoding="utf-8").splitlines())
    ]


@torch.no_grad()
def pooled_states(model, tok, texts: list[str], batch_size: int = 32) -> list[np.ndarray]:
    """Per layer (word lookup, embedding output, layer 1..N): mean over real tokens, (n, H)."""
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        m = enc["attention_mask"].unsqueeze(-1).float()
        word = model.get_input_embeddings()(enc["input_ids"])
        hs = model(**enc, output_hidden_states=True).hidden_states  # (emb output, layer 1..N)
        layers = [word, *hs]
        pooled = [((h * m).sum(1) / m.sum(1)).numpy() for h in layers]
        if not outs:
            outs = [[] for _ in pooled]
        for k, p in enumerate(pooled):
            outs[k].append(p)
    return [np.concatenate(o) for o in outs]


@torch.no_grad()
def layer_rms(model, tok, texts: list[str]) -> list[float]:
    """RMS of the entries of real-token states per layer (word lookup, embedding output, layers)."""
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    word = model.get_input_embeddings()(enc["input_ids"])
    hs = model(**enc, output_hidden_states=True).hidden_states
    return [float(h[mask].pow(2).mean().sqrt()) for h in (word, *hs)]


def analyse(model_dir: Path, task_dir: Path, n: int = 200, sigma: float = 0.5, eps: float = 1.0) -> dict:
    from transformers import AutoModel, AutoTokenizer  # ~0.6 s: only to analyse, not for --help

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    W = model.get_input_embeddings().weight.detach()
    H = W.shape[1]
    rms = float(W.pow(2).mean().sqrt())
    train = _rows(task_dir / "train-en.tsv")[:1000]
    lengths = [len(tok(a, b)["input_ids"]) for a, b, _ in train]
    n_tok = float(np.mean(lengths))
    unit = {
        "embedding_entry_rms": rms,
        "token_row_norm_mean": float(W.norm(dim=1).mean()),
        "hidden_size": H,
        "pair_tokens_mean": n_tok,
        "rs_rp_token_noise_norm_per_sigma": rms * math.sqrt(H),
        "pgd_token_shift_norm_per_eps": rms / math.sqrt(n_tok),
    }
    langs = json.loads((task_dir / "meta.json").read_text())["languages"]
    test = {lang: _rows(task_dir / f"test-{lang}.tsv") for lang in langs}
    # unique sentences in a fixed order (synopses and paragraphs both), parallel across languages
    keys: list[tuple[int, int]] = []
    seen: set[str] = set()
    for k, (a, b, _) in enumerate(test["en"]):
        for col, s in ((0, a), (1, b)):
            if s not in seen:
                seen.add(s)
                keys.append((k, col))
    keys = keys[:n]
    texts = {lang: [test[lang][k][c] for k, c in keys] for lang in langs}
    states = {lang: pooled_states(model, tok, texts[lang]) for lang in langs}
    rms_l = layer_rms(model, tok, texts["en"][:64])
    names = ["word lookup", "embedding output"] + [f"layer {i}" for i in range(1, len(rms_l) - 1)]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(keys))
    perm = np.where(perm == np.arange(len(keys)), (perm + 1) % len(keys), perm)
    layers = []
    for li, name in enumerate(names):
        scale = rms_l[li] * math.sqrt(H)
        en = states["en"][li]
        row = {"layer": name, "entry_rms": rms_l[li]}
        row["other_english_sentence"] = float(np.linalg.norm(en - en[perm], axis=1).mean() / scale)
        for lang in langs[1:]:
            x = states[lang][li]
            row[f"translation_{lang}"] = float(np.linalg.norm(en - x, axis=1).mean() / scale)
            row[f"language_offset_{lang}"] = float(np.linalg.norm(x.mean(0) - en.mean(0)) / scale)
        layers.append(row)
    return {
        "unit": unit,
        "layers": layers,
        "perturbation": {
            "rs_rp_sigma": sigma,
            "rs_rp_per_token_noise_over_token_norm": sigma * rms * math.sqrt(H) / unit["token_row_norm_mean"],
            "pgd_eps": eps,
            "pgd_per_token_shift_over_token_norm": eps * rms / math.sqrt(n_tok) / unit["token_row_norm_mean"],
        },
        "n_sentences": len(keys),
    }


def format_analysis(a: dict) -> str:
    u, p = a["unit"], a["perturbation"]
    lines = [
        f"entry RMS {u['embedding_entry_rms']:.4f}, token row norm {u['token_row_norm_mean']:.3f} "
        f"(H = {u['hidden_size']}), {u['pair_tokens_mean']:.1f} real tokens per training pair",
        f"RS-RP sigma {p['rs_rp_sigma']} (relative): noise per token = "
        f"{100 * p['rs_rp_per_token_noise_over_token_norm']:.0f}% of a token row's norm",
        f"PGD eps {p['pgd_eps']} (relative, one L2 ball per pair): shift per token = "
        f"{100 * p['pgd_per_token_shift_over_token_norm']:.2f}% of a token row's norm",
        "",
    ]
    langs = [k.split("_")[-1] for k in a["layers"][0] if k.startswith("translation_")]
    head = (
        ["layer", "other en sentence"] + [f"translation {x}" for x in langs] + [f"offset {x}" for x in langs]
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in a["layers"]:
        cells = [r["layer"], f"{r['other_english_sentence']:.3f}"]
        cells += [f"{r[f'translation_{x}']:.3f}" for x in langs] + [
            f"{r[f'language_offset_{x}']:.3f}" for x in langs
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "(distances between mean-pooled sentence vectors, divided by the layer's entry RMS x sqrt(H); "
        f"{a['n_sentences']} parallel test sentences)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real.scales", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=None, help="converted model folder (default: the build's)")
    parser.add_argument("--task", default=None, help="task folder (default: the build's)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--eps", type=float, default=1.0)
    args = parser.parse_args(argv)
    cfg = paths.cache_dir() / "real.yaml"
    if args.model is None or args.task is None:
        data = yaml.safe_load(cfg.read_text())
        args.model = args.model or data["model"]["name_or_path"]
        args.task = args.task or data["task"]["path"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    a = analyse(Path(args.model), Path(args.task), n=args.n, sigma=args.sigma, eps=args.eps)
    out = Path(args.task) / "scales.json"
    atomic_write_json(out, a, indent=1)
    print(format_analysis(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
