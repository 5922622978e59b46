"""Readers of the published federated files, their preprocessing, cache and evaluation.

Every file here is written by the test in the real format (FedJAX's SQLite
schema and msgpack encoding, built by hand with msgpack; LEAF's JSON), with
a few clients of tiny images and texts.
"""

import json
import os
import sqlite3
import zlib

import jax
import msgpack
import numpy as np
import pytest

from fedjax_comp import evaluation, models
from fedjax_comp.data import federated_files, file_cache, formats, text, tff_sqlite


def _fedjax_blob(features):
  """FedJAX's client blob, written from its format description (not with our encoder)."""
  packed = {}
  for k, v in features.items():
    if v.dtype == object:
      payload = msgpack.packb((list(v.shape), list(v.reshape(-1))), use_bin_type=True)
      packed[k] = msgpack.ExtType(4, payload)
    else:
      payload = msgpack.packb((v.shape, v.dtype.name, v.tobytes("C")), use_bin_type=True)
      packed[k] = msgpack.ExtType(1, payload)
  return zlib.compress(msgpack.packb(packed, use_bin_type=True))


def _write_fedjax(path, clients, num_examples=None):
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, "
               "data BLOB NOT NULL, num_examples INTEGER NOT NULL)")
  for cid, feats in clients.items():
    n = len(next(iter(feats.values()))) if num_examples is None else num_examples[cid]
    conn.execute("INSERT INTO federated_data VALUES (?, ?, ?)",
                 (cid.encode(), _fedjax_blob(feats), n))
  conn.commit()
  conn.close()


def _emnist_clients(rng, sizes, classes=62):
  return {f"f{i:04d}_{i % 100:02d}": {
      "pixels": rng.random((n, 28, 28)).astype(np.float32),
      "label": rng.integers(0, classes, n).astype(np.int32)} for i, n in enumerate(sizes)}


def test_fedjax_sqlite_reader_returns_exactly_what_was_written(tmp_path):
  rng = np.random.default_rng(0)
  clients = _emnist_clients(rng, [3, 1, 5])
  clients["snips"] = {"snippets": np.array([b"To be", b"or not\n"], dtype=object)}
  _write_fedjax(tmp_path / "d.sqlite", clients)
  got = list(formats.read_fedjax_sqlite(tmp_path / "d.sqlite"))
  assert [c for c, _ in got] == list(clients)
  for (cid, feats) in got:
    assert set(feats) == set(clients[cid])
    for k, v in feats.items():
      if v.dtype == object:
        assert list(v) == list(clients[cid][k])
      else:
        assert v.dtype == clients[cid][k].dtype
        np.testing.assert_array_equal(v, clients[cid][k])
  ids, sizes = formats.fedjax_sqlite_sizes(tmp_path / "d.sqlite")
  assert ids == list(clients) and sizes.tolist() == [3, 1, 5, 2]
  # Our writer produces the same format (what the reader reads back).
  formats.write_fedjax_sqlite(tmp_path / "w.sqlite", clients)
  again = dict(formats.read_fedjax_sqlite(tmp_path / "w.sqlite"))
  np.testing.assert_array_equal(again["f0002_02"]["pixels"], clients["f0002_02"]["pixels"])


def test_fedjax_sqlite_errors_name_the_file_and_the_problem(tmp_path):
  missing = tmp_path / "federated_emnist_train.sqlite"
  with pytest.raises(FileNotFoundError, match="federated_emnist_train.sqlite.*https://"):
    list(formats.read_fedjax_sqlite(missing, "https://example.org/x.sqlite"))
  conn = sqlite3.connect(tmp_path / "other.sqlite")
  conn.execute("CREATE TABLE examples (a INTEGER)")
  conn.close()
  with pytest.raises(ValueError, match="no table 'federated_data'.*examples"):
    list(formats.read_fedjax_sqlite(tmp_path / "other.sqlite"))
  conn = sqlite3.connect(tmp_path / "types.sqlite")
  conn.execute("CREATE TABLE federated_data (client_id BLOB, data BLOB, num_examples TEXT)")
  conn.close()
  with pytest.raises(ValueError, match="num_examples has type 'TEXT', expected INTEGER"):
    list(formats.read_fedjax_sqlite(tmp_path / "types.sqlite"))
  conn = sqlite3.connect(tmp_path / "corrupt.sqlite")
  conn.execute("CREATE TABLE federated_data (client_id BLOB, data BLOB, num_examples INTEGER)")
  conn.execute("INSERT INTO federated_data VALUES (?, ?, ?)", (b"w1", b"not zlib", 1))
  conn.commit()
  conn.close()
  with pytest.raises(ValueError, match="client 'w1'.*does not decompress"):
    list(formats.read_fedjax_sqlite(tmp_path / "corrupt.sqlite"))
  (tmp_path / "text.sqlite").write_text("hello")
  with pytest.raises(ValueError, match="not a readable SQLite database"):
    list(formats.read_fedjax_sqlite(tmp_path / "text.sqlite"))
  rng = np.random.default_rng(1)
  bad = {"w2": {"pixels": rng.random((3, 28, 28)).astype(np.float32),
                "label": np.zeros(2, np.int32)}}
  _write_fedjax(tmp_path / "ragged.sqlite", bad, num_examples={"w2": 3})
  with pytest.raises(ValueError, match="client 'w2'.*pixels=3, label=2.*truncate"):
    list(formats.read_fedjax_sqlite(tmp_path / "ragged.sqlite"))
  ok = {"w3": {"label": np.zeros(2, np.int32)}}
  _write_fedjax(tmp_path / "count.sqlite", ok, num_examples={"w3": 5})
  with pytest.raises(ValueError, match="num_examples says 5 but its features hold 2"):
    list(formats.read_fedjax_sqlite(tmp_path / "count.sqlite"))


def test_shakespeare_preprocessing_by_hand():
  # FedJAX's documented case, sequence length 3: [b"ABCD", b"E"].
  a, b, c, d, e = (int(text.char_ids(ch)[0]) for ch in (b"A", b"B", b"C", b"D", b"E"))
  bos, eos, pad = text.BOS, text.EOS, text.PAD
  out = text.shakespeare({"snippets": np.array([b"ABCD", b"E"], dtype=object)}, seq_len=3)
  np.testing.assert_array_equal(out["x"], [[bos, a, b], [c, d, eos], [bos, e, pad]])
  np.testing.assert_array_equal(out["y"], [[a, b, c], [d, eos, bos], [e, eos, pad]])
  # The published vocabulary: 86 characters at 3..88, OOV 89, 90 ids in all.
  assert text.SHAKESPEARE_VOCAB == 90 and text.SHAKESPEARE_OOV == 89
  assert text.char_ids(b"d").tolist() == [3] and text.char_ids(b"\r").tolist() == [88]
  assert text.char_ids("é".encode()).tolist() == [89, 89]  # two bytes, both unknown
  leaf = text.leaf_shakespeare({"x": ["dhl"], "y": ["p"]})
  np.testing.assert_array_equal(leaf["x"], [[3, 4, 5]])
  np.testing.assert_array_equal(leaf["y"], [[4, 5, 6]])


def test_emnist_and_leaf_femnist_flip_pixels():
  pixels = np.linspace(0, 1, 2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
  out = text.emnist({"pixels": pixels, "label": np.array([3, 61])})
  assert out["x"].shape == (2, 28, 28, 1) and out["y"].dtype == np.int32
  np.testing.assert_array_equal(out["x"][..., 0], 1 - pixels)
  leaf = text.leaf_femnist({"x": pixels.reshape(2, 784).tolist(), "y": [3, 61]})
  np.testing.assert_allclose(leaf["x"], out["x"], atol=1e-7)
  with pytest.raises(ValueError, match="no feature 'label'"):
    text.emnist({"pixels": pixels})


def _leaf_file(path, users):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"users": list(users), "num_samples": [len(u["y"]) for u in
                                                                     users.values()],
                              "user_data": users}))


def test_leaf_reader_joins_users_across_files_and_refuses_mismatch(tmp_path):
  _leaf_file(tmp_path / "train" / "a.json", {"u1": {"x": [[0.5] * 784], "y": [7]}})
  _leaf_file(tmp_path / "train" / "b.json", {"u1": {"x": [[0.25] * 784], "y": [8]},
                                             "u2": {"x": [[1.0] * 784] * 2, "y": [1, 2]}})
  got = dict(formats.read_leaf_json(tmp_path, "train"))
  assert got["u1"]["y"].tolist() == [7, 8] and got["u2"]["y"].tolist() == [1, 2]
  np.testing.assert_array_equal(got["u1"]["x"][:, 0], [0.5, 0.25])
  _leaf_file(tmp_path / "bad" / "c.json", {"u3": {"x": [[0.0] * 784] * 3, "y": [1]}})
  with pytest.raises(ValueError, match="user 'u3': x has 3 examples but y has 1"):
    list(formats.read_leaf_json(tmp_path, "bad"))
  with pytest.raises(FileNotFoundError, match="test.*json"):
    list(formats.read_leaf_json(tmp_path, "test"))


def test_cache_reads_once_and_rebuilds_when_the_source_changes(tmp_path):
  src = tmp_path / "train.sqlite"
  rng = np.random.default_rng(2)
  _write_fedjax(src, _emnist_clients(rng, [2, 0, 3]))
  calls = []

  def clients():
    calls.append(1)
    for cid, feats in formats.read_fedjax_sqlite(src):
      yield cid, text.emnist(feats) if feats["label"].size else {
          "x": np.zeros((0, 28, 28, 1), np.float32), "y": np.zeros(0, np.int32)}

  first = file_cache.cached_ragged([src], "t", clients)
  assert first.num_clients == 2 and first.dropped_empty == 1 and len(calls) == 1
  assert isinstance(first.features["x"], np.memmap) and first.sizes().tolist() == [2, 3]
  raw = dict(formats.read_fedjax_sqlite(src))
  np.testing.assert_array_equal(first.features["x"][2:5, ..., 0],
                                1 - raw["f0002_02"]["pixels"])
  again = file_cache.cached_ragged([src], "t", clients)
  assert len(calls) == 1 and again.path == first.path
  _write_fedjax(tmp_path / "new.sqlite", _emnist_clients(rng, [4]))
  os.replace(tmp_path / "new.sqlite", src)
  st = src.stat()
  os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  rebuilt = file_cache.cached_ragged([src], "t", clients)
  assert len(calls) == 2 and rebuilt.sizes().tolist() == [4]
  assert not first.path.exists()  # the stale cache of the same tag is removed


def _tiny_emnist_dir(tmp_path):
  tmp_path.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  _write_fedjax(tmp_path / "federated_emnist_train.sqlite", _emnist_clients(rng, [6, 9, 4, 7]))
  _write_fedjax(tmp_path / "federated_emnist_test.sqlite", _emnist_clients(rng, [2, 3, 1, 2]))
  return tmp_path


def test_file_dataset_and_per_client_evaluation(tmp_path):
  data = federated_files.FileDataset("emnist_federated", _tiny_emnist_dir(tmp_path))
  assert data.num_clients == 4 and data.num_classes == 62
  assert data.input_shape == (28, 28, 1) and data.sizes().tolist() == [6, 9, 4, 7]
  assert data.test.x.shape == (8, 28, 28, 1) and data.test.groups.tolist() == [0, 0, 1, 1, 1,
                                                                               2, 3, 3]
  model = models.get_model("logistic", data.input_shape, data.num_classes)
  params = model.init(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  got = evaluation.evaluate(model, params, evaluation.batch_for_eval(data.test, 3,
                                                                     by_client=True))
  # Reference: per-example correctness from the model's logits, averaged by hand.
  pred = np.argmax(np.asarray(model.apply(params, data.test.x)), -1)
  right = (pred == data.test.y).astype(np.float64)
  per_client = [right[data.test.groups == g].mean() for g in range(4)]
  np.testing.assert_allclose(got["accuracy"], right.mean(), atol=1e-6)
  np.testing.assert_allclose(got["accuracy_per_client"], np.mean(per_client), atol=1e-6)
  sampled = federated_files.FileDataset("emnist_federated", tmp_path, test_clients=2, seed=5)
  assert len(np.unique(sampled.test.groups)) == 2
  with pytest.raises(FileNotFoundError, match="shakespeare_train.sqlite.*gresearch/fedjax"):
    federated_files.FileDataset("shakespeare", tmp_path)
  with pytest.raises(ValueError, match="unknown variant 'x'"):
    federated_files.FileDataset("emnist_federated:x", tmp_path)
  with pytest.raises(ValueError, match="pass --data_dir"):
    federated_files.read_split("emnist_federated", None, "train")


def test_two_rounds_end_to_end_on_tiny_files(tmp_path):
  from fedjax_comp.experiment import configs, federated  # pylint: disable=import-outside-toplevel
  _tiny_emnist_dir(tmp_path)
  cfg = configs.FederatedConfig(
      data=configs.DataConfig(dataset="emnist_federated", data_dir=str(tmp_path)),
      train=configs.TrainConfig(model="logistic", clients_per_round=2, rounds=2,
                                local_epochs=1, batch_size=4, client_lr=0.1),
      run=configs.RunConfig(eval_every=1))
  exp, state, history = federated.run(cfg, None, say=None)
  assert exp.store == "device" and int(state.round) == 2
  last = history.evals[-1]
  assert 0 <= last["accuracy_per_client"] <= 1 and 0 <= last["accuracy"] <= 1
  assert history.records[-1]["test_accuracy_per_client"] == last["accuracy_per_client"]


def test_client_npz_brings_your_own_data(tmp_path):
  rng = np.random.default_rng(4)
  for split, sizes in (("train", [3, 5]), ("test", [2, 2])):
    (tmp_path / split).mkdir()
    for i, n in enumerate(sizes):
      np.savez(tmp_path / split / f"c{i}.npz", x=rng.random((n, 6)).astype(np.float32),
               y=rng.integers(0, 4, n))
  data = federated_files.FileDataset("client_npz", tmp_path)
  assert data.sizes().tolist() == [3, 5] and data.input_shape == (6,)
  assert data.num_classes == int(max(data.train_population.features["y"].max(),
                                     data.test_population.features["y"].max())) + 1
  clients = dict(formats.from_mapping({"a": {"x": np.zeros((2, 3)), "y": np.zeros(2)}}))
  assert clients["a"]["x"].shape == (2, 3)
  # The same clients from memory: the same arrays, client by client.
  def load(split):
    return {p.stem: dict(np.load(p)) for p in sorted((tmp_path / split).glob("*.npz"))}
  mem = federated_files.FileDataset.from_clients(load("train"), load("test"), name="mine")
  assert mem.sizes().tolist() == [3, 5] and mem.num_classes == data.num_classes
  np.testing.assert_array_equal(mem.train_population.features["x"],
                                data.train_population.features["x"])
  np.testing.assert_array_equal(mem.test.y, data.test.y)
  with pytest.raises(ValueError, match="client 'b'.*x=2, y=1"):
    list(formats.from_mapping({"b": {"x": np.zeros((2, 3)), "y": np.zeros(1)}}))


def test_task_preset_runs_two_rounds_from_the_cli_and_flags_win(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from fedjax_comp.experiment import results, tasks  # pylint: disable=import-outside-toplevel
  data_dir = _tiny_emnist_dir(tmp_path / "data")
  out = tmp_path / "out"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.fedavg", "--task=emnist_character",
       f"--data_dir={data_dir}", "--rounds=2", "--clients_per_round=2",
       "--server_optimizer=fedyogi", "--network=none", f"--output_dir={out}"],
      cwd=root, capture_output=True, text=True, timeout=600,
      env={**os.environ, "FEDJAX_COMP_CPU_DEVICES": "1"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = results.read_result(out)
  train = result["extras"]["config"]["train"]
  # The preset for FedYogi: 10^-1.5 / 10^-2.5, eps 10^-4, beta2 0.999; the model and batch.
  assert train["model"] == "emnist_cr" and train["batch_size"] == 20
  assert train["client_lr"] == 10**-1.5 and train["server_lr"] == 10**-2.5
  assert train["server_eps"] == 10**-4 and train["server_beta2"] == 0.999
  assert train["rounds"] == 2 and train["clients_per_round"] == 2  # the flags given win
  m = result["metrics"]
  assert m["task"] == "emnist_character" and m["reference_accuracy"] is None
  assert "not yet checked" in m["reference_source"]
  assert 0 <= m["final_test_accuracy_per_client"] <= 1
  assert tasks.get_task("shakespeare_character").values("fedavg")[1]["batch_size"] == 4


def test_stackoverflow_ids_by_hand_and_vocabulary_file(tmp_path):
  # FedJAX's documented case: vocabulary three, four, five; 'six' is OOV (6).
  ids = text.WordIds(["three", "four", "five"], seq_len=5)
  out = ids({"tokens": np.array([b"three four five", b"five three four five six"],
                                dtype=object)})
  np.testing.assert_array_equal(out["x"], [[1, 3, 4, 5, 0], [1, 5, 3, 4, 5]])
  np.testing.assert_array_equal(out["y"], [[3, 4, 5, 2, 0], [5, 3, 4, 5, 6]])
  short = text.WordIds(["three", "four", "five"], seq_len=2)(
      {"tokens": np.array([b"three four five"], dtype=object)})
  np.testing.assert_array_equal(short["x"], [[1, 3]])  # cut: no EOS
  counts = tmp_path / "stackoverflow.word_count"
  counts.write_text("the 9\nto 5\na 2\n")
  assert text.read_word_counts(counts, 2) == ["the", "to"]
  with pytest.raises(ValueError, match="holds 3 words, but the vocabulary needs 5"):
    text.read_word_counts(counts, 5)
  assert text.count_words([b"b a b", b"c b a"], 2) == ["b", "a"]


def test_stackoverflow_dataset_counts_its_vocabulary_or_reads_the_file(tmp_path):
  sentences = {"u1": [b"how do i sort a list", b"sort it"], "u2": [b"a list of lists"],
               "u3": []}
  for split in ("train", "test"):
    _write_fedjax(tmp_path / f"stackoverflow_{split}.sqlite", {
        u: {"tokens": np.array(s, dtype=object), "type": np.array([b"q"] * len(s),
                                                                   dtype=object)}
        for u, s in sentences.items()})
  notes = []
  data = federated_files.FileDataset("stackoverflow", tmp_path, say=notes.append)
  assert data.num_clients == 2 and any("dropped 1 clients" in n for n in notes)
  assert "most frequent words" in data.note
  words = 9  # distinct words in the train split
  assert data.num_classes == words + 4
  x = data.train_population.features["x"]
  assert x.shape == (3, 20) and x[0, 0] == text.BOS
  (tmp_path / "stackoverflow.word_count").write_text(
      "".join(f"w{i} {20_000 - i}\n" for i in range(10_000)))
  with_file = federated_files.FileDataset("stackoverflow", tmp_path)
  assert with_file.num_classes == 10_004 and "first 10,000 words" in with_file.note
  assert int(with_file.train_population.features["y"][0, 0]) == 10_003  # 'how' is OOV


def test_tff_sqlite_parses_tf_examples_without_tensorflow(tmp_path):
  # A tf.train.Example {"label": int64_list [3]} in protobuf's wire format, by hand.
  entry = b"\x0a\x05label" + b"\x12\x05" + b"\x1a\x03\x0a\x01\x03"
  blob = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
  assert tff_sqlite.parse_example(blob)["label"].tolist() == [3]
  rng = np.random.default_rng(5)
  clients = {f"c{i}": {"image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
                       "label": rng.integers(0, 100, n), "coarse_label": np.zeros(n, int)}
             for i, n in enumerate([3, 2])}
  tff_sqlite.write_tff_sqlite(tmp_path / "cifar100.sqlite",
                           {"train": clients, "test": {"c0": {k: v[:1] for k, v in
                                                              clients["c0"].items()}}})
  got = dict(tff_sqlite.read_tff_sqlite(tmp_path / "cifar100.sqlite", "train",
                                     {"image": (32, 32, 3), "label": ()}))
  assert list(got) == ["c0", "c1"]
  np.testing.assert_array_equal(got["c1"]["image"], clients["c1"]["image"])
  np.testing.assert_array_equal(got["c0"]["label"], clients["c0"]["label"])
  data = federated_files.FileDataset("cifar100_federated", tmp_path)
  assert data.input_shape == (32, 32, 3) and data.num_classes == 100
  assert data.train_population.features["x"].dtype == np.uint8
  with pytest.raises(ValueError, match="no split 'val'; splits: train, test"):
    list(tff_sqlite.read_tff_sqlite(tmp_path / "cifar100.sqlite", "val", {"label": ()}))
  with pytest.raises(ValueError, match="client 'c0': an example has no feature 'pixels'"):
    list(tff_sqlite.read_tff_sqlite(tmp_path / "cifar100.sqlite", "train", {"pixels": (28, 28)}))
  with pytest.raises(FileNotFoundError, match="emnist_all.sqlite.*tff-datasets-public.*unxz"):
    federated_files.FileDataset("emnist_tff", tmp_path)


def test_file_scale_runner_builds_maps_and_feeds_cohorts(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  common = ["--so_fraction=0.0005", f"--so_dir={tmp_path}", "--so_rounds=3"]
  out = {}
  for phase in ("build", "pipeline"):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.file_scale", f"--so_phase={phase}",
                           *common], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FEDJAX_COMP_CPU_DEVICES": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["build"]["clients"] == round(342_477 * 0.0005)
  cache = next((tmp_path / ".fedjax_comp_cache").glob("so_scale-*"))
  pop = file_cache.load_cache(cache)
  assert int(pop.offsets[-1]) == out["build"]["examples"]
  assert pop.features["x"].shape[1:] == (20,) and int(pop.features["x"][0, 0]) == text.BOS
  np.testing.assert_array_equal(pop.features["x"][:, 1:], pop.features["y"][:, :-1])
  # 50 clients a round, each capped at 1,000 examples.
  assert 50 <= out["pipeline"]["examples_per_round"] <= 50 * 1000
  assert out["pipeline"]["pipeline_examples_per_s"] > 0


def test_leaf_and_tff_emnist_datasets_read_end_to_end(tmp_path):
  rng = np.random.default_rng(6)
  leaf = tmp_path / "leaf"
  for split in ("train", "test"):
    _leaf_file(leaf / split / "all_data_0.json", {
        f"w{i}": {"x": rng.random((n, 784)).round(3).tolist(),
                  "y": rng.integers(0, 62, n).tolist()} for i, n in enumerate([2, 3])})
  femnist = federated_files.FileDataset("leaf_femnist", leaf)
  assert femnist.input_shape == (28, 28, 1) and femnist.sizes().tolist() == [2, 3]
  raw = json.loads((leaf / "train" / "all_data_0.json").read_text())["user_data"]["w1"]
  np.testing.assert_allclose(femnist.train_population.features["x"][2:5].reshape(3, 784),
                             1 - np.asarray(raw["x"], np.float32), atol=1e-6)
  shk = tmp_path / "leaf_shk"
  for split in ("train", "test"):
    _leaf_file(shk / split / "a.json", {"ROMEO": {"x": ["to be or", "o be or "], "y": [" ", "n"]}})
  play = federated_files.FileDataset("leaf_shakespeare", shk)
  assert play.num_classes == 90 and play.input_shape == (8,)
  np.testing.assert_array_equal(play.train_population.features["y"][1, -1],
                                text.char_ids(b"n")[0])
  tff = {split: {f"f{i:04d}_00": {"pixels": rng.random((n, 28, 28)).astype(np.float32),
                                  "label": rng.integers(0, 62, n)}
                 for i, n in enumerate([2, 1])} for split in ("all_train", "all_test")}
  tff_sqlite.write_tff_sqlite(tmp_path / "emnist_all.sqlite", tff)
  emnist = federated_files.FileDataset("emnist_tff", tmp_path)
  np.testing.assert_allclose(emnist.train_population.features["x"][:2, ..., 0],
                             1 - tff["all_train"]["f0000_00"]["pixels"], atol=1e-7)
  with pytest.raises(ValueError, match="no split 'digits_only_train'"):
    federated_files.FileDataset("emnist_tff:digits", tmp_path)


def test_directory_sources_are_cached_once_and_rebuilt_on_an_edit(tmp_path):
  rng = np.random.default_rng(7)
  users = {"w0": {"x": rng.random((2, 784)).round(3).tolist(), "y": [1, 2]}}
  for split in ("train", "test"):
    _leaf_file(tmp_path / split / "a.json", users)
  builds = []
  say = lambda m: builds.append(m) if m.startswith("building") else None
  federated_files.FileDataset("leaf_femnist", tmp_path, say=say)
  federated_files.FileDataset("leaf_femnist", tmp_path, say=say)
  assert len(builds) == 2  # train and test, once each: the second run maps them
  users["w0"]["y"] = [3, 4]  # the same file name, rewritten in place
  _leaf_file(tmp_path / "train" / "a.json", users)
  st = (tmp_path / "train" / "a.json").stat()
  os.utime(tmp_path / "train" / "a.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  again = federated_files.FileDataset("leaf_femnist", tmp_path, say=say)
  assert len(builds) == 3 and again.train_population.features["y"].tolist() == [3, 4]


def test_a_damaged_or_inconsistent_cache_is_refused_naming_it(tmp_path):
  src = tmp_path / "d.sqlite"
  _write_fedjax(src, {"a": {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int32)},
                      "b": {"x": np.zeros((1, 3), np.float32), "y": np.zeros(1, np.int32),
                            "z": np.zeros(1, np.int32)}})
  with pytest.raises(ValueError, match="client 'b' has features"):
    file_cache.cached_ragged([src], "t", lambda: formats.read_fedjax_sqlite(src))
  assert not list((tmp_path / ".fedjax_comp_cache").glob("t-*"))  # nothing committed
  src.unlink()
  _write_fedjax(src, {"a": {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int32)}})
  pop = file_cache.cached_ragged([src], "t", lambda: formats.read_fedjax_sqlite(src))
  with open(pop.path / "feature_x.bin", "r+b") as f:
    f.truncate(8)
  with pytest.raises(ValueError, match="feature_x.bin: the cache is damaged"):
    file_cache.cached_ragged([src], "t", lambda: formats.read_fedjax_sqlite(src))
