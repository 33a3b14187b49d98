"""``gimefive unpack-data`` on a hostile pack: names from the pack never escape ``-o``.

Packs travel between machines, so the CSV name and every file name inside the CSV are
untrusted. A crafted pack must be refused as a whole, with one line and nothing written
anywhere (not even the output folder).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from gimefive.train.pack import PACK_VERSION, TILES
from test_train import run_cli

from gimefive.preprocess import INPUT_SIZE


def craft_pack(path, csv_name: str, rows: list[str], faces: int | None = None) -> None:
    """A pack with one mosaic and the given CSV name and rows (as a hostile peer makes it)."""
    mosaic = np.full((TILES * INPUT_SIZE, TILES * INPUT_SIZE), 128, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", mosaic)
    assert ok
    csv_bytes = ("\n".join(rows) + "\n").encode()
    with open(path, "wb") as f:
        np.savez(f, version=np.int64(PACK_VERSION), jpeg=jpeg.ravel(),
                 offsets=np.array([0, jpeg.size], np.int64), csv_name=np.array(csv_name),
                 csv_bytes=np.frombuffer(csv_bytes, np.uint8),
                 size=np.int64(INPUT_SIZE), quality=np.int64(90))


def tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root)
            for d, dirs, files in os.walk(root) for n in dirs + files}


@pytest.mark.parametrize("csv_name, rows, named", [
    ("../x.csv", ["a.png,0"], "../x.csv"),
    ("/tmp/gimefive-evil.csv", ["a.png,0"], "/tmp/gimefive-evil.csv"),
    ("labels.csv", ["a.png,0", "../../y.png,1"], "../../y.png"),
    ("labels.csv", ["a.png,0", "sub/../../y.png,1"], "sub/../../y.png"),
    ("labels.csv", ["{abs},2"], "{abs}"),
    ("labels.csv", ["labels.csv,2"], "labels.csv"),
])
def test_unpack_refuses_names_outside_the_output_folder(tmp_path, capsys, csv_name, rows,
                                                        named):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    absolute = str(outside / "abs.png")
    rows = [r.format(abs=absolute) for r in rows]
    named = named.format(abs=absolute)
    pack_path = tmp_path / "evil.pack"
    craft_pack(pack_path, csv_name, rows)
    before = tree(tmp_path)
    out_dir = tmp_path / "work" / "out"
    code, out, err = run_cli(capsys, "unpack-data", str(pack_path), "-o", str(out_dir))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("gimefive: error: ")
    assert named in err and "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written, not even the output folder
    assert not os.path.exists("/tmp/gimefive-evil.csv")


def test_unpack_refuses_more_rows_than_faces_before_writing(tmp_path, capsys):
    pack_path = tmp_path / "short.pack"
    craft_pack(pack_path, "labels.csv", [f"f{i}.png,0" for i in range(TILES * TILES + 1)])
    code, _, err = run_cli(capsys, "unpack-data", str(pack_path), "-o", str(tmp_path / "o"))
    assert code == 2 and "257 rows but 256 faces" in err
    assert not (tmp_path / "o").exists()


def test_unpack_refuses_a_file_that_is_not_a_pack(tmp_path, capsys):
    bogus = tmp_path / "bogus.pack"
    bogus.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_cli(capsys, "unpack-data", str(bogus), "-o", str(tmp_path / "o"))
    assert code == 2 and err.startswith(f"gimefive: error: {bogus}: not a gimefive pack")
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_unpack_of_a_good_crafted_pack_writes_inside(tmp_path, capsys):
    pack_path = tmp_path / "ok.pack"
    craft_pack(pack_path, "labels.csv", ["a.png,0", "sub/b.png,1"])
    code, out, err = run_cli(capsys, "unpack-data", str(pack_path), "-o", str(tmp_path / "o"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "o" / "labels.csv")
    assert tree(tmp_path / "o") == {"labels.csv", "a.png", "sub", os.path.join("sub", "b.png")}
