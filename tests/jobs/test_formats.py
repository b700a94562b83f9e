"""Readers and writers on their own: chunking, seeking, bad rows, and cutting back to a commit."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlserve.errors import InvalidInput
from mlserve.jobs.formats import open_reader, open_writer
from mlserve.spec import TensorSpec

X = (TensorSpec("x", "FP32", (-1, 4)),)
Y = (TensorSpec("y", "FP32", (-1, 2)),)


def _read_all(reader, step):
    chunks = []
    while (chunk := reader.read(step)) is not None:
        chunks.append(chunk)
    return chunks


def test_npz_reader_streams_chunks_and_seeks(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    np.savez_compressed(tmp_path / "in.npz", x=x)
    reader = open_reader(tmp_path / "in.npz", X)
    assert reader.num_rows == 10
    chunks = _read_all(reader, 4)
    assert [c.num_rows for c in chunks] == [4, 4, 2]
    assert np.array_equal(np.concatenate([c.inputs["x"] for c in chunks]), x.astype(np.float32))
    assert chunks[-1].inputs["x"].dtype == np.float32
    reader.seek(chunks[0].state)
    again = reader.read(100)
    assert again.rows.tolist() == list(range(4, 10))
    assert np.array_equal(again.inputs["x"], x[4:].astype(np.float32))
    reader.close()


def test_npz_reader_reads_stored_arrays_straight_and_seeks(tmp_path):
    """np.savez stores arrays uncompressed: read straight from the file, several inputs, any seek."""
    specs = (TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT64", (-1,)))
    a, b = np.arange(30, dtype=np.float32).reshape(10, 3), np.arange(10, dtype=np.int64) * 7
    np.savez(tmp_path / "in.npz", b=b, a=a)
    reader = open_reader(tmp_path / "in.npz", specs)
    chunks = _read_all(reader, 3)
    assert [c.num_rows for c in chunks] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate([c.inputs["a"] for c in chunks]), a)
    assert np.array_equal(np.concatenate([c.inputs["b"] for c in chunks]), b)
    for state, first in (({"row": 7}, 7), ({}, 0), ({"row": 10}, None)):
        reader.seek(state)
        chunk = reader.read(100)
        if first is None:
            assert chunk is None
            continue
        assert chunk.rows.tolist() == list(range(first, 10))
        assert np.array_equal(chunk.inputs["a"], a[first:]) and np.array_equal(chunk.inputs["b"], b[first:])
    reader.close()


def test_npz_reader_finds_stored_bytes_past_a_local_extra_field(tmp_path):
    """The local header's extra field (zip64 writers add one) moves where a member's bytes begin."""
    import zipfile

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    with zipfile.ZipFile(tmp_path / "in.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, x)
    reader = open_reader(tmp_path / "in.npz", X)
    assert np.array_equal(reader.read(100).inputs["x"], x)
    reader.close()


def test_npz_reader_refuses_a_stored_array_whose_bytes_do_not_match_its_crc(tmp_path):
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    path = tmp_path / "in.npz"
    np.savez(path, x=x)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(x[50].tobytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    reader = open_reader(path, X)
    reader.read(60)
    with pytest.raises(InvalidInput, match="'x' is corrupt"):
        reader.read(60)
    reader.close()


def test_npz_reader_refuses_what_does_not_fit_the_model(tmp_path):
    np.savez(tmp_path / "names.npz", z=np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidInput, match=r"holds arrays \['z'\]; the model takes \['x'\]"):
        open_reader(tmp_path / "names.npz", X)
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 5), np.float32))
    with pytest.raises(InvalidInput, match=r"shape \[2, 5\]"):
        open_reader(tmp_path / "shape.npz", X)


def test_jsonl_reader_reports_bad_lines_and_keeps_going(tmp_path):
    lines = [b'{"x": [1, 2, 3, 4]}', b"not json", b'{"x": [1, 2]}', b"", b'{"x": [5, 6, 7, 8], "id": 3}',
             b'{"x": ["a", "b", "c", "d"]}', b'{"x": [9, 9, 9, 9]}']
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    reader = open_reader(tmp_path / "in.jsonl", X)
    assert reader.num_rows == 6  # the blank line is not a row
    chunk = reader.read(100)
    assert chunk.rows.tolist() == [0, 5]
    assert np.array_equal(chunk.inputs["x"], np.array([[1, 2, 3, 4], [9, 9, 9, 9]], np.float32))
    reasons = {f.row: f.reason for f in chunk.failures}
    assert sorted(reasons) == [1, 2, 3, 4]
    assert "not valid JSON" in reasons[1]
    assert "must have shape [4], got [2]" in reasons[2]
    assert "unknown input(s) ['id']" in reasons[3]
    assert "takes numbers" in reasons[4]
    assert reader.read(100) is None


def test_jsonl_reader_resumes_from_a_chunk_state(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps({"x": r.tolist()}) + b"\n" for r in x))
    reader = open_reader(tmp_path / "in.jsonl", X)
    state = reader.read(2).state
    fresh = open_reader(tmp_path / "in.jsonl", X)
    fresh.seek(state)
    rest = fresh.read(10)
    assert rest.rows.tolist() == [2, 3, 4]
    assert np.array_equal(rest.inputs["x"], x[2:])


def test_parquet_reader_fast_path_slow_path_and_seek(tmp_path):
    x = np.arange(48, dtype=np.float32).reshape(12, 4)
    good = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})
    pq.write_table(good, tmp_path / "good.parquet", row_group_size=5)
    reader = open_reader(tmp_path / "good.parquet", X)
    assert reader.num_rows == 12
    chunks = _read_all(reader, 7)
    assert [c.num_rows for c in chunks] == [7, 5]
    assert np.array_equal(np.concatenate([c.inputs["x"] for c in chunks]), x)
    reader.seek({"row": 6})  # inside the second row group
    assert reader.read(100).rows.tolist() == list(range(6, 12))

    cells = [[1.0, 2.0, 3.0, 4.0], None, [1.0, 2.0], [5.0, 6.0, 7.0, 8.0]]
    pq.write_table(pa.table({"x": pa.array(cells, pa.list_(pa.float64()))}), tmp_path / "bad.parquet")
    chunk = open_reader(tmp_path / "bad.parquet", X).read(10)
    assert chunk.rows.tolist() == [0, 3]
    assert np.array_equal(chunk.inputs["x"], np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32))
    assert [(f.row, "null" in f.reason or "shape [4], got [2]" in f.reason) for f in chunk.failures] == [
        (1, True), (2, True)]


@pytest.mark.parametrize("suffix", [".npz", ".jsonl", ".parquet"])
def test_writer_cut_back_to_a_commit_writes_each_row_once(tmp_path, suffix):
    """Rows written after the last commit (a crash before the checkpoint) are dropped on restore."""
    out = tmp_path / f"out{suffix}"
    y = np.arange(20, dtype=np.float32).reshape(10, 2)
    rows = np.arange(10, dtype=np.int64)
    writer = open_writer(out, Y)
    writer.restore(None)
    writer.write(rows[:4], {"y": y[:4]})
    state = writer.commit()
    writer.write(rows[4:7], {"y": y[4:7]})  # written, synced even, but never recorded
    writer.commit()
    writer.close()

    resumed = open_writer(out, Y)
    resumed.restore(state)
    resumed.write(rows[4:], {"y": y[4:]})
    resumed.commit()
    resumed.finish()
    resumed.cleanup()
    got_rows, got_y = _read_output(out)
    assert got_rows.tolist() == list(range(10))
    assert np.array_equal(got_y, y)
    assert not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize("suffix", [".npz", ".jsonl", ".parquet"])
def test_a_crash_after_finish_but_before_the_checkpoint_says_done_finishes_again(tmp_path, suffix):
    """finish() ran (the output exists) but the checkpoint still says running: a resume restores the
    committed state and finishes again, with the same rows."""
    out = tmp_path / f"out{suffix}"
    y = np.arange(12, dtype=np.float32).reshape(6, 2)
    writer = open_writer(out, Y)
    writer.restore(None)
    writer.write(np.arange(6, dtype=np.int64), {"y": y})
    state = writer.commit()
    writer.finish()
    resumed = open_writer(out, Y)
    resumed.restore(state)
    resumed.finish()
    resumed.cleanup()
    got_rows, got_y = _read_output(out)
    assert got_rows.tolist() == list(range(6))
    assert np.array_equal(got_y, y)


def _read_output(path):
    if path.suffix == ".npz":
        with np.load(path) as data:
            return data["row"], data["y"]
    if path.suffix == ".jsonl":
        records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        return np.array([r["row"] for r in records]), np.array([r["y"] for r in records], np.float32)
    table = pq.read_table(path)
    return table.column("row").to_numpy(), np.array(table.column("y").to_pylist(), np.float32)
