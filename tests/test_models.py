"""Model cache: resolution, listing, sha256 verification, import, removal, locking."""

from __future__ import annotations

import json
import threading

import pytest

from conftest import save_random_tiny_model
from meddiff_cli.errors import ModelError, UsageError
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.registry import (
    import_model, list_models, model_lock, remove_model, resolve_model, verify_model,
)


def _flip_byte(path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_resolve_by_name_and_by_path(tiny_model, tmp_path):
    assert resolve_model("tiny") == tiny_model
    assert resolve_model(str(tiny_model)) == tiny_model
    with pytest.raises(ModelError, match="meddiff train"):
        resolve_model("no-such-model")  # neither in this empty cache nor bundled
    with pytest.raises(ModelError, match="no model.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UsageError, match="invalid model name"):
        resolve_model("bad name!")


def test_list_info_and_verify_cli(tiny_model, run_meddiff):
    code, stdout, _ = run_meddiff("models", "list", "--json")
    listing = json.loads(stdout)
    assert code == 0 and [m["name"] for m in listing["models"]] == ["tiny"]
    assert listing["models"][0]["modalities"] == ["ct", "mri"] and listing["models"][0]["onnx"]
    code, stdout, _ = run_meddiff("models", "info", "tiny", "--json")
    assert code == 0 and json.loads(stdout)["card"]["latent"]["shape"] == [8, 8, 8]
    code, stdout, _ = run_meddiff("models", "verify", "--json")
    report = json.loads(stdout)["verified"]["tiny"]
    assert code == 0 and set(report) == set(ModelCard.load(tiny_model).files)


@pytest.mark.parametrize("victim", ["autoencoder.safetensors", "onnx/denoiser.fp32.onnx"])
def test_verify_detects_a_flipped_byte(tiny_model, run_meddiff, victim):
    _flip_byte(tiny_model / victim, offset=len((tiny_model / victim).read_bytes()) // 2)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        verify_model(tiny_model)
    code, stdout, err = run_meddiff("models", "verify", "tiny")
    assert code == 6 and victim.split("/")[-1] in err.replace("\n", "") and stdout == ""


def test_verify_detects_missing_file_and_escaping_names(tiny_model):
    card = ModelCard.load(tiny_model)
    card.files["../outside.bin"] = "0" * 64
    card.save(tiny_model)
    with pytest.raises(ModelError, match="outside the model folder"):
        verify_model(tiny_model)
    del card.files["../outside.bin"]
    card.save(tiny_model)
    (tiny_model / "onnx" / "decoder.fp32.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        verify_model(tiny_model)


def test_import_copies_verified_models_only(tmp_path, run_meddiff):
    source = save_random_tiny_model(tmp_path / "trained", name="trained")
    (source / "checkpoint").mkdir()
    (source / "checkpoint" / "state.bin").write_bytes(b"training state, not needed to sample")
    code, stdout, _ = run_meddiff("models", "import", source, "--name", "ct32", "--json")
    assert code == 0
    target = resolve_model("ct32")
    assert json.loads(stdout)["name"] == "ct32" and ModelCard.load(target).name == "ct32"
    assert verify_model(target) and not (target / "checkpoint").exists()
    assert (target / "denoiser.safetensors").read_bytes() == (source / "denoiser.safetensors").read_bytes()
    code, _, err = run_meddiff("models", "import", source, "--name", "ct32")
    assert code == 2 and "already exists" in err
    with pytest.raises(UsageError):
        import_model(source, "../escape")
    _flip_byte(source / "denoiser.safetensors")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        import_model(source, "tampered")
    assert [m["name"] for m in list_models()] == ["ct32"]  # nothing half-imported


def test_rm_needs_confirmation_and_removes(tiny_model, run_meddiff):
    code, _, err = run_meddiff("models", "rm", "tiny")
    assert code == 2 and "--yes" in err and tiny_model.is_dir()
    code, _, _ = run_meddiff("models", "rm", "tiny", "--yes", "-q")
    assert code == 0 and not tiny_model.exists()
    with pytest.raises(ModelError, match="not in the cache"):
        remove_model("tiny")


def test_model_lock_excludes_other_holders(tiny_model):
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with model_lock(tiny_model):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    try:
        with pytest.raises(ModelError, match="lock"):
            with model_lock(tiny_model, timeout=0.2):
                pass
    finally:
        release.set()
        thread.join()
    with model_lock(tiny_model, timeout=1):
        pass


def test_bundled_default_is_copied_into_the_cache_verified_on_first_use(isolated_cache):
    """The package's default model resolves to a cache copy whose every file matches the card's sha256."""
    from meddiff_cli.model.registry import BUNDLED_DIR, verify_model

    if not (BUNDLED_DIR / "default" / "model.json").is_file():
        pytest.skip("no bundled default model in this checkout")
    folder = resolve_model(None)
    assert folder == isolated_cache / "models" / "default"
    assert verify_model(folder) == {name: "ok" for name in ModelCard.load(BUNDLED_DIR / "default").files}
    assert resolve_model("default") == folder  # second use: the cache copy, no new import


def test_the_bundled_folder_given_as_a_path_is_used_through_the_cache(isolated_cache):
    """`--model .../meddiff_cli/bundled/default` must not make meddiff write (ONNX exports) into the package."""
    from meddiff_cli.model.registry import BUNDLED_DIR

    bundled = BUNDLED_DIR / "default"
    if not (bundled / "model.json").is_file():
        pytest.skip("no bundled default model in this checkout")
    before = sorted(path.name for path in bundled.rglob("*"))
    assert resolve_model(str(bundled)) == isolated_cache / "models" / "default"
    assert resolve_model(bundled / ".." / "default") == isolated_cache / "models" / "default"
    assert sorted(path.name for path in bundled.rglob("*")) == before


def test_cached_copy_of_an_older_bundle_is_replaced_but_a_users_model_is_not(isolated_cache):
    """After an upgrade ships new bundled weights, `default` resolves to them; a same-named model of the user's stays."""
    import json

    from meddiff_cli.model.registry import BUNDLED_DIR

    if not (BUNDLED_DIR / "default" / "model.json").is_file():
        pytest.skip("no bundled default model in this checkout")
    folder = resolve_model("default")
    card_file = folder / "model.json"
    card = json.loads(card_file.read_text())
    card["files"]["denoiser.safetensors"] = "0" * 64  # as if an older meddiff had bundled other weights
    card_file.write_text(json.dumps(card))
    assert resolve_model("default") == folder
    assert ModelCard.load(folder).files == ModelCard.load(BUNDLED_DIR / "default").files
    card = json.loads(card_file.read_text())
    card["intensity"]["ct"]["calibration"] = {"decoded": [-1.0, 1.0], "real": [-1.0, 0.9]}  # an older calibration
    card_file.write_text(json.dumps(card))
    resolve_model("default")
    assert ModelCard.load(folder).intensity == ModelCard.load(BUNDLED_DIR / "default").intensity

    card = json.loads(card_file.read_text())
    del card["training"]["bundled_weights_dtype"]  # now it is the user's own model called "default"
    card["files"]["denoiser.safetensors"] = "1" * 64
    card_file.write_text(json.dumps(card))
    resolve_model("default")
    assert ModelCard.load(folder).files["denoiser.safetensors"] == "1" * 64

    # A copy that gained weights of its own (e.g. a label decoder trained on it) is the user's too, marker or not.
    card["training"]["bundled_weights_dtype"] = "float16"
    card["files"]["my_weights.safetensors"] = "2" * 64
    card_file.write_text(json.dumps(card))
    resolve_model("default")
    assert ModelCard.load(folder).files["my_weights.safetensors"] == "2" * 64


def test_repair_box_edges_copies_only_edges_and_corners_from_the_next_voxel_inwards():
    import torch

    from meddiff_cli.model.networks import repair_box_edges

    volume = torch.randn(2, 1, 5, 6, 7)
    repaired = repair_box_edges(volume)
    x, y, z = (torch.arange(n) for n in (5, 6, 7))
    faces = [((g == 0) | (g == g.max())).int() for g in torch.meshgrid(x, y, z, indexing="ij")]
    edge = (faces[0] + faces[1] + faces[2]) >= 2
    assert int(edge.sum()) == 4 * (3 + 4 + 5) + 8  # 12 edges without their corners, plus 8 corners
    assert torch.equal(repaired[:, :, ~edge], volume[:, :, ~edge])  # faces and interior untouched
    assert torch.equal(repaired[:, :, 0, 0, 3], volume[:, :, 1, 1, 3])  # an edge along z
    assert torch.equal(repaired[:, :, 4, 2, 6], volume[:, :, 3, 2, 5])  # an edge along y
    assert torch.equal(repaired[:, :, 4, 5, 6], volume[:, :, 3, 4, 5])  # a corner
    assert torch.equal(repair_box_edges(volume[:, :, :2]), volume[:, :, :2])  # too thin to have an inside


def test_weights_with_metadata_are_written_byte_for_byte_the_same(tmp_path):
    """safetensors writes metadata in hash-map order; meddiff sorts it, so bundling the same weights twice gives the
    same sha256 (the model's identity in every sampling run) and the file still loads exactly."""
    import torch
    from safetensors import safe_open

    from meddiff_cli.model.store import load_state_dict, save_state_dict

    state = {"b.weight": torch.arange(6, dtype=torch.float16).view(2, 3), "a.bias": torch.ones(5)}
    metadata = {f"key_{i}": "x" * i for i in (7, 3, 5, 1, 6, 2, 4, 0)}  # 8! orders: sorted by chance 1 in 40320
    first = save_state_dict(state, tmp_path / "first.safetensors", metadata=metadata)
    header_length = int.from_bytes((tmp_path / "first.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "first.safetensors").read_bytes()[8:8 + header_length])
    assert list(header["__metadata__"]) == sorted(metadata)
    assert save_state_dict(dict(reversed(state.items())), tmp_path / "second.safetensors",
                           metadata=dict(reversed(metadata.items()))) == first
    loaded = load_state_dict(tmp_path / "first.safetensors", first)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(tmp_path / "first.safetensors"), "pt") as opened:
        assert opened.metadata() == metadata
