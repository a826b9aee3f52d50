"""The bad-input corpus: what a new user gets wrong — seed files, caption files, image folders, configs, output
folders, teacher endpoints — and the exact outcome of each: an exit code with one line on stderr naming the file,
line or setting (no trace without --debug), or a quarantine row with its rule while the run goes on.

Fast by design: most cases are refused before the run starts; the ones that fail inside an asset run the real
Dagster graph against a loopback endpoint (or a closed port) on a small photo folder, never a real engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import socketserver
import sqlite3
import struct
import subprocess
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import yaml
from PIL import Image

from persona_factory.config import ImageSourceSettings, SourceSettings
from persona_factory.stages.images import load_image_pool
from persona_factory.stages.personas import read_seeds
from persona_factory.stages.plans import image_side
from persona_factory.teacher.embedded import EMBEDDED_SERVED_NAME
from pipelines.cli import main

try:
    from tests.fake_openai import FakeOpenAI, Reply
    from tests.fake_teacher import openai_responder
except ImportError:
    from fake_openai import FakeOpenAI, Reply
    from fake_teacher import openai_responder

pytestmark = pytest.mark.timeout(60)
TOKEN = "hf_Qz7WvXk2LmN9pRtY4bHc8JdF3sGa6EuKo1"  # shaped like a Hub token; never a real one


# ---------------------------------------------------------------------------------------------- harness


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def line(self) -> str:
        """The one line on stderr; fails unless there is exactly one and no trace."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        assert "Traceback" not in self.err
        return lines[0]


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def cli(capfd, monkeypatch, dagster_home) -> Callable[..., Outcome]:
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))

    def run(*args: str) -> Outcome:
        capfd.readouterr()
        code = main(["materialize", *args])
        out, err = capfd.readouterr()
        return Outcome(code, out, err)

    run.last = capfd.readouterr  # what a run that exited (argparse) wrote
    return run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def config(tmp_path: Path, data: dict | str, name: str = "run.yaml") -> str:
    return str(write(tmp_path / name, data if isinstance(data, str) else yaml.safe_dump(data)))


def noise_png(seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight small photos on both halves of the pool: image_pool takes a fraction of a second."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(8):
        write(folder / f"photo_{i}.png", noise_png(i))
    images, quarantined = load_image_pool(ImageSourceSettings(kind="folder", path=str(folder)),
                                          tmp_path_factory.mktemp("store"))
    assert not quarantined and {image_side(i) for i in images} == {"train", "bench"}
    return folder


def run_config(tmp_path: Path, photos: Path, **extra) -> str:
    """A tiny run on the small photo folder, teacher requests failing fast."""
    data = {"image_source": {"kind": "folder", "path": str(photos)},
            "teacher": {"max_retries": 0, "request_timeout_s": 2, "connect_timeout_s": 1}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return config(tmp_path, data)


def refused_before_start(cli, tmp_path: Path, *args: str) -> Outcome:
    """Any case that should be refused before the run: a closed teacher port, so nothing can start an engine."""
    return cli("--output", str(tmp_path / "out"), "--teacher-url", f"http://127.0.0.1:{closed_port()}/v1", *args)


# ---------------------------------------------------------------------------------------------- seed files


SEED_FILE_ERRORS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing": (lambda d: d / "nope.txt", ("nope.txt", "persona_source.path", "does not exist")),
    "a_folder": (lambda d: (d / "seeds.txt").mkdir() or d / "seeds.txt", ("persona_source.path", "not a regular file")),
    "empty": (lambda d: write(d / "seeds.txt", ""), ("persona_source.path", "no usable persona seed")),
    "binary_as_text": (lambda d: write(d / "seeds.txt", noise_png(1)), ("persona_source.path", "binary data")),
    "spreadsheet": (lambda d: write(d / "seeds.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256))),
                    ("seeds.csv", "binary data")),
    "jsonl_all_bad": (lambda d: write(d / "seeds.jsonl", "{oops\n[1]\n{\"name\": \"x\"}\n"),
                      ("seeds.jsonl", "no usable", "line 1", "not JSON")),
    "csv_without_the_column": (lambda d: write(d / "seeds.csv", "name,job\nAna,nurse\n"),
                               ("seeds.csv", "persona_source.column", "'persona'", "['name', 'job']")),
    "csv_field_too_large": (lambda d: write(d / "seeds.csv", 'persona\n"' + "x" * 200_000 + '"\n'),
                            ("seeds.csv", "line 2", "not CSV")),
    "json_not_jsonl": (lambda d: write(d / "seeds.json", json.dumps(["A nurse.", "A pilot."])),
                       ("seeds.json", "'.json'", ".jsonl")),
    "too_few_distinct": (lambda d: write(d / "seeds.txt", "A nurse.\nA pilot.\nA nurse.\n"),
                         ("personas.*", "4 personas", "2 distinct seeds")),
}


@pytest.mark.parametrize("case", SEED_FILE_ERRORS, ids=list(SEED_FILE_ERRORS))
def test_seed_file_errors(cli, tmp_path, case):
    make, names = SEED_FILE_ERRORS[case]
    (tmp_path / "in").mkdir()
    path = make(tmp_path / "in")
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {
        "persona_source": {"kind": "file", "path": str(path)}}), "--estimate-only")
    assert o.code == 2
    for name in names:
        assert name in o.line, o.line


def test_a_seed_dataset_that_cannot_be_loaded(cli, tmp_path):
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {
        "persona_source": {"kind": "hub", "path": str(tmp_path / "no-such-dataset")}}), "--estimate-only")
    assert o.code == 2 and "persona_source.path" in o.line and "cannot be loaded" in o.line


GOOD = ["A beekeeper in Lyon.", "A night nurse who bakes.", "A ferry captain.", "A chess coach."]
SEED_QUARANTINE: dict[str, tuple[str, bytes, list[tuple[int, str]]]] = {
    # name: (file name, content, [(line, rule)]); every case also holds the four good seeds
    "txt_line_not_utf8": ("s.txt", "\n".join(GOOD[:2]).encode() + b"\n\xff\xfe caf\xe9\n" + "\n".join(GOOD[2:]).encode(),
                          [(3, "not_utf8")]),
    "txt_terminal_escapes": ("s.txt", ("\n".join(GOOD) + "\n\x1b[31mA red line\x1b[0m\n").encode(), [(5, "not_text")]),
    "txt_windows_line_ends": ("s.txt", "\r\n".join(GOOD).encode(), []),
    "txt_duplicate_seed": ("s.txt", "\n".join(GOOD + GOOD[:1]).encode(), [(5, "duplicate_seed")]),
    "txt_pasted_document": ("s.txt", "\n".join(GOOD + ["word " * 1000]).encode(), [(5, "too_long")]),
    "jsonl_not_json": ("s.jsonl", b"{oops\n", [(1, "not_json")]),
    "jsonl_not_an_object": ("s.jsonl", b'["A list."]\n', [(1, "not_an_object")]),
    "jsonl_missing_key": ("s.jsonl", b'{"name": "Ana"}\n', [(1, "missing_column")]),
    "jsonl_wrong_type": ("s.jsonl", b'{"persona": 42}\n', [(1, "not_text")]),
    "jsonl_empty_text": ("s.jsonl", b'{"persona": "   "}\n', [(1, "empty_text")]),
    "csv_short_row": ("s.csv", b'persona,age\n"A pilot"\n', [(2, "short_row")]),
    "csv_unquoted_comma": ("s.csv", b"persona,age\nA nurse, who bakes,40\n", [(2, "long_row")]),
    "csv_excel_bom": ("s.csv", b"\xef\xbb\xbfpersona\n", []),
}


def _seed_file(name: str, head: bytes) -> bytes:
    """The case's lines first, then the good seeds in the file's own format."""
    if name.endswith(".jsonl"):
        return head + "\n".join(json.dumps({"persona": t}) for t in GOOD).encode() + b"\n"
    if name.endswith(".csv"):
        header, _, rest = head.partition(b"\n")
        width = header.count(b",")
        return header + b"\n" + rest + b"".join(f'"{t}"'.encode() + b",0" * width + b"\n" for t in GOOD)
    return head


@pytest.mark.parametrize("case", SEED_QUARANTINE, ids=list(SEED_QUARANTINE))
def test_seed_lines_that_cannot_be_used_are_quarantined_and_the_rest_is_used(tmp_path, case):
    name, head, expected = SEED_QUARANTINE[case]
    path = write(tmp_path / name, _seed_file(name, head))
    seeds, quarantined = read_seeds(SourceSettings(kind="file", path=str(path)))
    assert [s.text for s in seeds] == GOOD
    assert [(q.table_name, q.row_key, q.rule) for q in quarantined] == [
        ("persona_seeds", f"{path} line {line}", rule) for line, rule in expected]


def test_the_cli_says_how_many_seed_lines_it_will_quarantine(cli, tmp_path):
    path = write(tmp_path / "s.jsonl", _seed_file("s.jsonl", b"{oops\n"))
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {
        "persona_source": {"kind": "file", "path": str(path)}}), "--estimate-only")
    assert o.code == 0 and o.err == ""
    assert f"1 seed lines cannot be used and will be quarantined, e.g. {path} line 1: not JSON" in o.out


# ---------------------------------------------------------------------------------------------- captions


def _captioned_folder(tmp_path: Path, captions: bytes) -> Path:
    folder = tmp_path / "photos"
    write(folder / "kite.png", noise_png(1))
    write(folder / "door.png", noise_png(2))
    write(folder / "captions.jsonl", captions + b"\n" + json.dumps(
        {"file": "kite.png", "caption": "a red kite", "labels": ["kite"]}).encode() + b"\n")
    return folder


CAPTION_LINES: dict[str, tuple[bytes, str]] = {
    "not_json": (b'{"file": "door.png", caption: "a door"}', "not JSON"),
    "not_an_object": (b'["door.png", "a door"]', "Input should be a valid dictionary"),
    "no_file_key": (b'{"caption": "a door"}', "file: Field required"),
    "labels_not_a_list": (b'{"file": "door.png", "labels": "door"}', "labels: Input should be a valid list"),
    "misspelt_key": (b'{"file": "door.png", "lables": ["door"]}', "lables: Extra inputs are not permitted"),
    "unknown_file": (b'{"file": "window.png", "caption": "a window"}', "'window.png' is not an image file"),
    "not_utf8": (b'{"file": "door.png", "caption": "caf\xe9"}', "not UTF-8"),
    "empty_caption": (b'{"file": "door.png", "caption": ""}', "caption: String should have at least 1 character"),
    "captioned_twice": (json.dumps({"file": "kite.png", "caption": "a blue kite"}).encode(), "captioned twice"),
}


@pytest.mark.parametrize("case", CAPTION_LINES, ids=list(CAPTION_LINES))
def test_a_bad_caption_line_is_quarantined_and_the_others_apply(tmp_path, case):
    line, why = CAPTION_LINES[case]
    images, quarantined = load_image_pool(ImageSourceSettings(kind="folder", path=str(
        _captioned_folder(tmp_path, line))), tmp_path / "store")
    line = 2 if case == "captioned_twice" else 1  # a second caption of the same file is the one left out
    assert [(q.row_key, q.rule) for q in quarantined] == [(f"captions.jsonl line {line}", "bad_caption_line")]
    assert why in quarantined[0].value, quarantined[0].value
    captions = {i.name: i.caption for i in images}
    assert captions["door"] == "door" and captions["kite"] in ("a red kite", "a blue kite")
    if case == "captioned_twice":
        assert captions["kite"] == "a blue kite"


# ---------------------------------------------------------------------------------------------- images


def _pool(tmp_path: Path, files: dict[str, bytes | Callable[[Path], None]], **source) -> tuple[list, list]:
    folder = tmp_path / "photos"
    folder.mkdir()
    write(folder / "keep.png", noise_png(7))
    for name, content in files.items():
        content(folder / name) if callable(content) else write(folder / name, content)
    return load_image_pool(ImageSourceSettings(kind="folder", path=str(folder), **source), tmp_path / "store")


def _saved(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **save) -> bytes:
    """PNG (or `fmt`) bytes; an array's mode follows its shape and type (uint16 2-D: 16-bit grey)."""
    buf = io.BytesIO()
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


IMAGE_QUARANTINE: dict[str, tuple[dict, str, str]] = {
    # name: (files, quarantined row key, rule)
    "one_pixel": ({"pixel.png": _saved(np.zeros((1, 1, 3), np.uint8))}, "pixel", "too_small"),
    "fifo_named_png": ({"pipe.png": _fifo}, "pipe", "not_a_regular_file"),
    "folder_named_png": ({"album.png": lambda p: p.mkdir()}, "album", "not_a_regular_file"),
    "dangling_link": ({"gone.png": lambda p: p.symlink_to(p.parent / "missing.png")}, "gone", "not_a_regular_file"),
    "not_an_image": ({"notes.jpg": b"these are notes, not a JPEG"}, "notes", "unreadable_image"),
    "truncated_jpeg": ({"cut.jpg": _saved(np.full((64, 64, 3), 90, np.uint8), "JPEG")[:300]}, "cut",
                       "unreadable_image"),
    "decompression_bomb": ({"bomb.png": _png_header_only(40_000, 40_000)}, "bomb", "unreadable_image"),
}


@pytest.mark.parametrize("case", IMAGE_QUARANTINE, ids=list(IMAGE_QUARANTINE))
def test_a_photo_that_cannot_be_used_is_quarantined_without_hanging(tmp_path, case):
    files, key, rule = IMAGE_QUARANTINE[case]
    images, quarantined = _pool(tmp_path, files)
    assert [i.name for i in images] == ["keep"]
    assert [(q.row_key, q.rule) for q in quarantined] == [(key, rule)]


def _pixels(record) -> np.ndarray:
    return np.asarray(Image.open(record.path).convert("RGB"), dtype=np.float64)


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (80, 40), (200, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    return _saved(img, "JPEG", exif=exif)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    return _saved(img, transparency=0)


IMAGE_CONVERSIONS: dict[str, tuple[bytes, Callable[[object, np.ndarray], bool]]] = {
    # name: (file, what the stored photo must look like)
    "16_bit_grey": (_saved(np.full((48, 64), 32768, np.uint16)), lambda r, px: abs(px.mean() - 128) < 2),
    "exif_rotation": (_exif_rotated(), lambda r, px: (r.width, r.height) == (40, 80)),
    "transparent_on_white": (_saved(np.zeros((48, 64, 4), np.uint8)), lambda r, px: px.min() > 250),
    "palette_transparency": (_palette_with_transparency(), lambda r, px: px.min() > 250),
    "cmyk_jpeg": (_saved(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
                  lambda r, px: px[..., 0].mean() > 200 and px[..., 1].mean() < 60),
    "grey_with_alpha": (_saved(np.dstack([np.full((48, 64), 60, np.uint8), np.full((48, 64), 255, np.uint8)])),
                        lambda r, px: abs(px.mean() - 60) < 2),
}


@pytest.mark.parametrize("case", IMAGE_CONVERSIONS, ids=list(IMAGE_CONVERSIONS))
def test_photos_are_stored_as_a_viewer_shows_them(tmp_path, case):
    content, looks_right = IMAGE_CONVERSIONS[case]
    suffix = ".jpg" if content[:2] == b"\xff\xd8" else ".png"
    images, quarantined = _pool(tmp_path, {f"photo{suffix}": content})
    assert not quarantined
    [record] = [i for i in images if i.name == "photo"]
    assert looks_right(record, _pixels(record)), case


IMAGE_FOLDER_ERRORS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing": (lambda d: d / "nope", ("image_source.path", "does not exist")),
    "a_file": (lambda d: write(d / "photos.zip", b"PK"), ("image_source.path", "is not a folder")),
    "empty": (lambda d: (d / "photos").mkdir() or d / "photos", ("image_source.path", "holds no", ".png")),
    "no_image_files": (lambda d: write(d / "photos" / "notes.txt", "hi").parent, ("image_source.path", "holds no")),
}


@pytest.mark.parametrize("case", IMAGE_FOLDER_ERRORS, ids=list(IMAGE_FOLDER_ERRORS))
def test_image_folder_errors_are_found_before_the_run(cli, tmp_path, case):
    make, names = IMAGE_FOLDER_ERRORS[case]
    folder = make(tmp_path)
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {
        "image_source": {"kind": "folder", "path": str(folder)}}), "--estimate-only")
    assert o.code == 2
    for name in names:
        assert name in o.line, o.line


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(EMBEDDED_SERVED_NAME, responder=openai_responder()) as server:
        yield server


def test_a_folder_of_unreadable_photos_fails_the_run_naming_the_setting(cli, tmp_path, fake):
    folder = tmp_path / "photos"
    for i in range(3):
        write(folder / f"broken_{i}.jpg", b"not a photo")
    o = cli("--output", str(tmp_path / "out"), "--teacher-url", fake.base_url, "--config",
            run_config(tmp_path, folder))
    assert o.code == 1
    assert o.line.startswith("error: image_pool: ") and "image_source.path" in o.line and "0 usable photos" in o.line
    assert "broken_0: unreadable_image" in o.line


def test_too_few_photos_fail_the_run_naming_the_setting(cli, tmp_path, fake, photos):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    o = cli("--output", str(tmp_path / "out"), "--teacher-url", fake.base_url, "--config",
            run_config(tmp_path, folder, image_source={"min_images": 20}))
    assert o.code == 1 and "image_source.min_images" in o.line and "8 usable photos" in o.line


# ---------------------------------------------------------------------------------------------- configs


CONFIG_ERRORS: dict[str, tuple[str | bytes | dict | None, tuple[str, ...], tuple[str, ...]]] = {
    # name: (file content, extra CLI args, names in the line)
    "duplicate_section": ("teacher:\n  max_tokens: 64\ndialogue:\n  image_turn_share: 0.1\nteacher:\n  model: x\n",
                          (), ("run.yaml", "line 5", "`teacher` is given twice", "line 1")),
    "duplicate_nested_key": ("teacher:\n  max_tokens: 64\n  max_tokens: 96\n", (), ("line 3", "`teacher.max_tokens`")),
    "infinite_timeout": ({"teacher": {"request_timeout_s": float("inf")}}, (), ("teacher.request_timeout_s", "finite")),
    "nan_probability": ({"plan": {"preference_shift_prob": float("nan")}}, (), ("plan.preference_shift_prob",)),
    "max_tokens_over_the_context": ({"teacher": {"max_tokens": 4096}}, (),
                                    ("teacher.max_tokens (4096)", "teacher.max_model_len (2048)")),
    "unknown_setting": ({"teacher": {"modle": "x"}}, (), ("`teacher.modle`", "unknown setting")),
    "section_not_a_mapping": ({"plan": 5}, (), ("`plan`", "valid dictionary")),
    "not_a_mapping": ("- a\n- b\n", (), ("run.yaml", "mapping")),
    "not_yaml": ("teacher: {model: [unclosed\n", (), ("run.yaml", "not valid YAML", "line 2")),
    "not_utf8": (b"teacher:\n  model: caf\xe9\n", (), ("run.yaml", "not UTF-8")),
    "missing_file": (None, (), ("run.yaml", "config_path", "does not exist")),
    "unknown_preset": ({}, ("--preset", "huge"), ("preset", "'huge'", "tiny")),
    "teacher_url_without_scheme": ({}, ("--teacher-url", "gpu-1:8000/v1"),
                                   ("`teacher.base_urls.1`", "http://", "gpu-1:8000/v1")),
    "negative_count": ({"personas": {"train": -1}}, (), ("personas.train",)),
    "zero_min_side": ({"image_source": {"min_side": 0}}, (), ("image_source.min_side",)),
    "token_pasted_as_api_key_env": ({"teacher": {"api_key_env": TOKEN}}, (), ("teacher.api_key_env", "NAME")),
    "token_pasted_as_token_env": ({"publish": {"hub_repo": "org/data", "token_env": TOKEN}}, (),
                                  ("publish.token_env", "NAME")),
    "push_without_a_token": ({"publish": {"hub_repo": "org/data", "token_env": "NO_SUCH_TOKEN_VAR"}}, (),
                             ("publish.token_env", "'NO_SUCH_TOKEN_VAR'", "holds no Hub token")),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=list(CONFIG_ERRORS))
def test_config_errors_name_the_setting_before_the_run(cli, tmp_path, case):
    content, args, names = CONFIG_ERRORS[case]
    path = str(tmp_path / "run.yaml") if content is None else \
        str(write(tmp_path / "run.yaml", content)) if isinstance(content, (str, bytes)) else config(tmp_path, content)
    o = refused_before_start(cli, tmp_path, "--config", path, *args)
    assert o.code == 2
    for name in names:
        assert name in o.line, o.line
    assert TOKEN not in o.out + o.err


@pytest.mark.parametrize("args,names", [(("--outptu", "x"), ("unrecognized arguments: --outptu",)),
                                        (("--max-requests", "0"), ("--max-requests", "positive"))],
                         ids=["misspelt_flag", "zero_budget"])
def test_command_line_mistakes_are_one_line(cli, tmp_path, args, names):
    with pytest.raises(SystemExit) as exited:
        cli(*args)
    assert exited.value.code == 2
    o = Outcome(2, *cli.last())
    for name in names:
        assert name in o.line, o.line


def test_a_run_over_the_request_budget_refuses_to_start(cli, tmp_path):
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {"dialogue": {
        "turns_train": {"min": 1_000_000, "max": 1_000_000}}}))
    assert o.code == 2 and "teacher.max_requests" in o.line and "--yes" in o.line
    assert "~2,000,056 turns" in o.out  # the estimate was printed first
    o = refused_before_start(cli, tmp_path, "--max-requests", "10")
    assert o.code == 2 and "more than the budget of 10" in o.line


def test_yes_starts_a_run_over_the_budget(cli, tmp_path, photos):
    o = refused_before_start(cli, tmp_path, "--config", run_config(tmp_path, photos), "--max-requests", "10", "--yes")
    assert o.code == 1 and o.line.startswith("error: personas: ") and "teacher.base_urls" in o.line


# ---------------------------------------------------------------------------------------------- output folders


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """A folder nobody may write into, root included (chattr +i where we run as root)."""
    path.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("no way to make a folder read-only for root here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


OUTPUT_ERRORS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "a_file": (lambda d: write(d / "out", "x"), ("output_dir", "--output", "is a file")),
    "below_a_file": (lambda d: write(d / "out", "x") / "run1", ("output_dir", "cannot be created", "Not a directory")),
    "database_not_duckdb": (lambda d: write(d / "out" / "pipeline.duckdb", "hello").parent,
                            ("working database", "pipeline.duckdb", "move it away")),
    "database_is_a_folder": (lambda d: (d / "out" / "pipeline.duckdb").mkdir(parents=True) or d / "out",
                             ("working database", "pipeline.duckdb")),
    "cache_not_sqlite": (lambda d: write(d / "out" / "teacher_cache.sqlite", b"\0garbage" * 512).parent,
                         ("teacher response cache", "teacher_cache.sqlite", "move it away")),
}


@pytest.mark.parametrize("case", OUTPUT_ERRORS, ids=list(OUTPUT_ERRORS))
def test_output_folder_errors_name_the_folder_before_the_run(cli, tmp_path, case):
    make, names = OUTPUT_ERRORS[case]
    o = cli("--output", str(make(tmp_path)), "--teacher-url", f"http://127.0.0.1:{closed_port()}/v1",
            "--estimate-only")
    assert o.code == 2
    for name in names:
        assert name in o.line, o.line


def test_a_read_only_output_folder(cli, tmp_path):
    with _immutable(tmp_path / "out"):
        o = cli("--output", str(tmp_path / "out"), "--teacher-url", f"http://127.0.0.1:{closed_port()}/v1",
                "--estimate-only")
    assert o.code == 2 and "output_dir" in o.line and "not writable" in o.line


def test_an_unprepared_embedded_model_names_the_set_up(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_FACTORY_CACHE", str(tmp_path / "empty-cache"))
    o = cli("--output", str(tmp_path / "out"))  # no endpoint: the run would start its own engine
    assert o.code == 2 and "teacher.model" in o.line and "make setup" in o.line


# ---------------------------------------------------------------------------------------------- teacher endpoints


class RawServer:
    """A TCP server on loopback that answers every connection with fixed bytes, or never answers at all."""

    def __init__(self, reply: bytes | None):
        done = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                if reply is None:
                    done.wait(30)
                else:
                    self.request.sendall(reply)

        self._done = done
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._done.set()
        self._server.shutdown()
        self._server.server_close()


HTML = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 31\r\nConnection: close\r\n\r\n<html><body>Welcome</body></html>"


def _raw(reply: bytes | None):
    def start(stack: list) -> str:
        server = RawServer(reply)
        stack.append(server.close)
        return server.base_url
    return start


def _fake(path: str = "/v1", **kwargs):
    def start(stack: list) -> str:
        server = FakeOpenAI(EMBEDDED_SERVED_NAME, **kwargs).start()
        stack.append(server.stop)
        return server.base_url.removesuffix("/v1") + path
    return start


ENDPOINT_ERRORS: dict[str, tuple[Callable[[list], str], tuple[str, ...]]] = {
    "down": (lambda stack: f"http://127.0.0.1:{closed_port()}/v1", ("teacher.base_urls", "unreachable")),
    "answers_html": (_raw(HTML), ("teacher.base_urls", "not an OpenAI-compatible server")),
    "silent": (_raw(None), ("teacher.base_urls", "unreachable", "Timeout")),
    "not_http": (_raw(b"SSH-2.0-OpenSSH_9.6\r\n"), ("teacher.base_urls", "unreachable")),
    "another_model": (_fake(served_models=["Qwen/Qwen2.5-VL-7B-Instruct"]), ("teacher.model", "Qwen/Qwen2.5-VL-7B")),
    "wants_an_api_key": (_fake(responder=openai_responder(), api_key="sk-expected"),
                         ("teacher.api_key_env", "HTTP 401")),
    "url_without_v1": (_fake(path=""), ("teacher.base_urls", "should end in /v1")),
    "refuses_every_request": (_fake(responder=lambda body: Reply.status(400)),
                              ("all 4 teacher requests failed", "refused: HTTP 400", "teacher.retry_cached_failures")),
    "answers_html_to_chat": (_fake(responder=lambda body: Reply.not_json()),
                             ("all 4 teacher requests failed", "transport: malformed response")),
    "never_answers_chat": (_fake(responder=lambda body: Reply.sleep(10.0)),
                           ("all 4 teacher requests failed", "transport: timeout")),
}


@pytest.mark.parametrize("case", ENDPOINT_ERRORS, ids=list(ENDPOINT_ERRORS))
def test_teacher_endpoint_errors_end_the_run_with_the_cause(cli, tmp_path, photos, case):
    start, names = ENDPOINT_ERRORS[case]
    stack: list = []
    try:
        url = start(stack)
        o = cli("--output", str(tmp_path / "out"), "--teacher-url", url, "--config", run_config(tmp_path, photos))
    finally:
        for stop in reversed(stack):
            stop()
    assert o.code == 1
    assert o.line.startswith("error: personas: "), o.line
    for name in names:
        assert name in o.line, o.line


def test_a_refused_request_is_cached_and_not_sent_again_unless_asked(cli, tmp_path, photos):
    with FakeOpenAI(EMBEDDED_SERVED_NAME, responder=lambda body: Reply.status(400)) as fake:
        args = ("--output", str(tmp_path / "out"), "--teacher-url", fake.base_url)
        assert cli(*args, "--config", run_config(tmp_path, photos)).code == 1
        assert fake.request_count == 4
        assert cli(*args, "--config", run_config(tmp_path, photos)).code == 1
        assert fake.request_count == 4  # the refusals came from the cache
        recover = run_config(tmp_path, photos, teacher={"retry_cached_failures": True})
        assert cli(*args, "--config", recover).code == 1
        assert fake.request_count == 8
    with sqlite3.connect(tmp_path / "out" / "teacher_cache.sqlite") as con:
        rows = con.execute("SELECT ok, failure FROM responses").fetchall()
    assert rows and all(ok == 0 and failure == "refused: HTTP 400: fake error 400" for ok, failure in rows)


def test_debug_shows_the_whole_trace(cli, tmp_path, photos):
    o = cli("--output", str(tmp_path / "out"), "--teacher-url", f"http://127.0.0.1:{closed_port()}/v1", "--config",
            run_config(tmp_path, photos), "--debug")
    assert o.code == 1
    assert "Stack Trace" in o.err and o.err.strip().splitlines()[-1].startswith("error: personas: ")
    o = refused_before_start(cli, tmp_path, "--preset", "huge", "--debug")
    assert o.code == 2 and "Traceback" in o.err and o.err.strip().splitlines()[-1].startswith("error: unknown preset")


# ---------------------------------------------------------------------------------------------- secrets


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_token_pasted_into_token_env_is_never_written_anywhere(cli, tmp_path, dagster_home):
    o = refused_before_start(cli, tmp_path, "--config", config(tmp_path, {
        "publish": {"hub_repo": "org/data", "token_env": TOKEN}}))
    assert o.code == 2 and "publish.token_env" in o.line
    assert TOKEN not in o.out + o.err
    assert _files_holding(tmp_path / "out", TOKEN) == [] and _files_holding(dagster_home, TOKEN) == []


def test_a_token_in_its_variable_stays_out_of_every_file_of_a_run(cli, tmp_path, dagster_home, photos, monkeypatch):
    """The run starts (the token check passed) and fails later; nothing it wrote holds the token."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("TEACHER_API_KEY", TOKEN)
    o = refused_before_start(cli, tmp_path, "--config", run_config(tmp_path, photos, publish={"hub_repo": "org/data"}))
    assert o.code == 1 and o.line.startswith("error: personas: ")
    assert TOKEN not in o.out + o.err
    assert (tmp_path / "out" / "images").is_dir()  # the run did write outputs
    assert _files_holding(tmp_path / "out", TOKEN) == [] and _files_holding(dagster_home, TOKEN) == []
