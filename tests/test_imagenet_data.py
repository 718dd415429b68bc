"""ImageNet-family datasets on tiny generated trees: layouts, label spaces, logit projection,
ObjectNet mapping and border crop, fine-tuning captions, caption tables, the loader factory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from imagenet_trees import PICK, WNIDS, jpeg, objectnet_release, tree
from PIL import Image

from harness.core.errors import ConfigError
from harness.core.metrics import accuracy, expected_calibration_error
from harness.data.finetune_captions import (
    CaptionedImages,
    CaptionFileDataset,
    TemplateCaptions,
    imagenet_templates,
    read_caption_table,
)
from harness.data.imagenet import (
    OBJECTNET_BORDER,
    imagenet_a,
    imagenet_classnames,
    imagenet_folder,
    imagenet_r,
    imagenet_sets,
    imagenet_sketch,
    imagenet_v2,
    objectnet,
    objectnet_mapping,
)
from harness.data.image_files import LabelSpace, project_logits, projected_logits_and_labels
from harness.data.pipeline import EpochSampler, clip_preprocess, make_loader
from harness.trial.set_reports import set_report

to_tensor = lambda image: torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # noqa: E731


# --------------------------------------------------------------------------- facts


def test_wnid_table_is_the_standard_order():
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(WNIDS)
    assert WNIDS[0] == "n01440764" and WNIDS[500] == "n03042490" and WNIDS[-1] == "n15075141"
    names = imagenet_classnames()
    assert (names[0], names[500], names[999]) == ("tench", "cliff dwelling", "toilet paper")


@pytest.mark.parametrize("which", ["openai", "simple"])
def test_templates_as_format_strings_caption_as_open_clips_do(which):
    """open_clip's templates are functions of the class name; ours are format strings that must give the same
    captions, in the same order, for names with braces, quotes and spaces too."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    originals = OPENAI_IMAGENET_TEMPLATES if which == "openai" else SIMPLE_IMAGENET_TEMPLATES
    templates = imagenet_templates(which)
    assert len(templates) == len(originals)
    for name in ("tench", "cliff dwelling", "a {brace}", "it's"):
        assert [template.format(name) for template in templates] == [original(name) for original in originals]


# --------------------------------------------------------------------------- layouts


def test_imagenet_folders_are_wordnet_ids(tmp_path):
    root = tree(tmp_path / "train", [WNIDS[i] for i in PICK])
    data = imagenet_folder(root, to_tensor)
    assert len(data) == 8 and data.class_subset is None and data.label_space.num_classes == 1000
    assert sorted(set(data.labels.tolist())) == PICK
    image, label = data[0]
    assert image.shape == (3, 32, 32) and label == PICK[0]
    (root / "not_a_wnid").mkdir()
    with pytest.raises(ConfigError, match="not_a_wnid"):
        imagenet_folder(root)


def test_imagenet_v2_index_folders(tmp_path):
    root = tree(tmp_path / "v2", [0, 7, 999], suffix=".jpeg")
    data = imagenet_v2(root, to_tensor)
    assert data.class_subset is None
    assert data.labels.tolist() == [0, 0, 7, 7, 999, 999]  # numeric, not lexicographic ("999" < "7")
    (root / "1000").mkdir()
    with pytest.raises(ConfigError, match="'1000'"):
        imagenet_v2(root)


def test_sketch_is_the_full_space(tmp_path):
    root = tree(tmp_path / "sketch", [WNIDS[i] for i in PICK[:3]], suffix=".png")
    data = imagenet_sketch(root, to_tensor)
    assert data.class_subset is None and sorted(set(data.labels.tolist())) == PICK[:3]


@pytest.mark.parametrize("loader", [imagenet_r, imagenet_a])
def test_r_and_a_subset_from_folders_present(tmp_path, loader):
    root = tree(tmp_path / "r", [WNIDS[i] for i in reversed(PICK)])
    (root / "README.txt").write_text("not a class")  # ImageNet-A ships one; files at the top are ignored
    data = loader(root, to_tensor)
    assert data.class_subset == PICK
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # positions in the subset
    assert data.benchmark_labels.tolist() == [i for i in PICK for _ in range(2)]
    assert data.classnames == tuple(imagenet_classnames()[i] for i in PICK)


def test_subset_projection_matches_hand_computation(tmp_path):
    data = imagenet_r(tree(tmp_path / "r", [WNIDS[i] for i in PICK], per_class=1))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 1000)) * 3
    logits[0, 500] = 50.0  # a confident prediction outside the subset: must not count
    labels = np.arange(4)
    # By hand: softmax over only the subset's columns.
    sub = logits[:, PICK]
    probs = np.exp(sub - sub.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    projected, target = projected_logits_and_labels(torch.tensor(logits), data)
    assert torch.equal(target, torch.tensor(labels))
    np.testing.assert_allclose(projected.softmax(1).numpy(), probs, rtol=1e-12)
    full = torch.tensor(logits).softmax(1)[:, PICK]
    assert not torch.allclose(full, torch.tensor(probs))  # differs from a 1000-way softmax
    report = set_report(torch.tensor(logits), data)
    assert report["acc"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert report["ece"] == pytest.approx(expected_calibration_error(torch.tensor(probs), torch.tensor(labels)))
    assert report["n"] == 4


def test_full_space_projection_is_identity():
    logits = torch.randn(3, 1000)
    assert project_logits(logits, LabelSpace.full(imagenet_classnames())) is logits


# --------------------------------------------------------------------------- ObjectNet


def test_objectnet_mapping_files(tmp_path):
    root = objectnet_release(tmp_path)
    assert objectnet_mapping(root / "mappings") == {"bananas": (3,), "chairs": (17, 250), "mugs": (981,)}


def test_objectnet_classes_labels_and_border_crop(tmp_path):
    assert OBJECTNET_BORDER == 1
    data = objectnet(objectnet_release(tmp_path), to_tensor)
    assert data.label_space.groups == ((3,), (17, 250), (981,))  # sorted by folder; "zips" is unmapped
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2] and data.class_subset == [3, 17, 250, 981]
    image, _ = data[0]
    assert image.shape == (3, 10, 10)  # 12x12 minus a 1-px border on every side
    red = (image[0] == 255) & (image[1] == 0) & (image[2] == 0)
    assert not red.any()
    uncropped = objectnet(objectnet_release(tmp_path / "b"), to_tensor, border=0)[0][0]
    assert uncropped.shape == (3, 12, 12) and (uncropped[0, 0] == 255).all()


def test_objectnet_scores_a_multi_id_class_by_its_max_logit(tmp_path):
    data = objectnet(objectnet_release(tmp_path))
    logits = torch.full((2, 1000), -5.0, dtype=torch.float64)
    logits[:, 500] = 40.0  # outside ObjectNet's ids: ignored
    logits[0, [3, 17, 250, 981]] = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    logits[1, [3, 17, 250, 981]] = torch.tensor([2.5, 2.0, 1.0, 0.0], dtype=torch.float64)
    projected, labels = projected_logits_and_labels(logits, data, torch.tensor([1, 1]))
    hand = np.array([[1.0, 3.0, 0.5], [2.5, 2.0, 0.0]])  # max over {17, 250} for "chairs"
    np.testing.assert_allclose(projected.numpy(), hand)
    probs = projected.softmax(1)
    assert accuracy(probs, labels) == 0.5
    summed = objectnet(objectnet_release(tmp_path / "s"), pooling="logsumexp").label_space.project(logits)
    hand = logits.numpy()
    np.testing.assert_allclose(summed[:, 1].numpy(), np.log(np.exp(hand[:, 17]) + np.exp(hand[:, 250])))


def test_objectnet_bad_mapping_names_the_file(tmp_path):
    root = objectnet_release(tmp_path)
    json.dump({"Banana": "no such thing"}, open(root / "mappings" / "objectnet_to_imagenet_1k.json", "w"))
    with pytest.raises(ConfigError, match="objectnet_to_imagenet_1k.json.*no such thing"):
        objectnet(root)


def test_imagenet_sets_under_one_root(tmp_path):
    tree(tmp_path / "imagenet" / "val", [WNIDS[i] for i in PICK], per_class=1)
    tree(tmp_path / "imagenet-r", [WNIDS[i] for i in PICK[:2]], per_class=1)
    objectnet_release(tmp_path)
    sets = imagenet_sets(tmp_path, to_tensor, skip_missing=True)
    assert list(sets) == ["imagenet", "imagenet-r", "objectnet"]
    with pytest.raises(ConfigError, match="imagenet-a"):
        imagenet_sets(tmp_path, names=["imagenet-a"])


# --------------------------------------------------------------------------- captions


def test_template_captions_deterministic_and_varied():
    captions = TemplateCaptions(seed=3)
    again = TemplateCaptions(seed=3)
    first = [captions(0, i, 1) for i in range(200)]
    assert first == [again(0, i, 1) for i in range(200)]
    assert all("goldfish" in c for c in first)
    assert len({captions.template_index(0, i) for i in range(200)}) > 50  # varied across images
    changed = sum(captions.template_index(0, i) != captions.template_index(1, i) for i in range(200))
    assert changed > 180  # re-drawn each epoch
    assert [TemplateCaptions(seed=4)(0, i, 1) for i in range(200)] != first


def test_captioned_images_through_persistent_workers(tmp_path):
    data = imagenet_folder(tree(tmp_path / "train", [WNIDS[i] for i in PICK]), to_tensor)
    captioned = CaptionedImages(data, TemplateCaptions(seed=0))
    sampler = EpochSampler(len(captioned), seed=0)
    loader = make_loader(captioned, batch_size=4, train=True, num_workers=1, sampler=sampler, device="cpu")
    assert loader.persistent_workers and loader.drop_last and not loader.pin_memory
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen[epoch] = [c for _, caps, _ in loader for c in caps]
        assert len(seen[epoch]) == 8
    expected = {epoch: sorted(captioned.captions(epoch, i, int(data.labels[i])) for i in range(8)) for epoch in (0, 1)}
    assert sorted(seen[0]) == expected[0] and sorted(seen[1]) == expected[1]  # the workers saw the new epoch


# --------------------------------------------------------------------------- caption tables


def test_caption_table_csv_and_tsv(tmp_path):
    jpeg(tmp_path / "a.jpg", (1, 2, 3))
    jpeg(tmp_path / "sub" / "b.jpg", (4, 5, 6))
    (tmp_path / "c.csv").write_text('filepath,caption\na.jpg,"a photo, with a comma"\nsub/b.jpg,another\n')
    table = read_caption_table(tmp_path / "c.csv", check_files=True)
    assert table.captions == ["a photo, with a comma", "another"] and list(table.lines) == [2, 3]
    (tmp_path / "c.tsv").write_text("title\tpath\nfirst\ta.jpg\n")
    table = read_caption_table(tmp_path / "c.tsv", filepath_key="path", caption_key="title")
    image, caption = CaptionFileDataset(table, to_tensor)[0]
    assert caption == "first" and image.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"c\.csv:1: empty file"),
        ("path,caption\nx.jpg,y\n", r"c\.csv:1: header has no column 'filepath'"),
        ("filepath,caption\na.jpg,ok\nb.jpg\n", r"c\.csv:3: expected 2 fields, got 1"),
        ("filepath,caption\na.jpg,ok\n\nb.jpg,  \n", r"c\.csv:4: empty 'caption'"),
        ("filepath,caption\nmissing.jpg,ok\n", r"c\.csv:2: image file not found"),
        ("filepath,caption\n", r"c\.csv:2: no rows"),
    ],
)
def test_caption_table_errors_name_file_and_line(tmp_path, text, message):
    jpeg(tmp_path / "a.jpg", (1, 2, 3))
    jpeg(tmp_path / "b.jpg", (1, 2, 3))
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        read_caption_table(tmp_path / "c.csv", check_files=True)
    assert "\n" not in str(error.value)


def test_caption_table_unreadable_image_names_the_line(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "c.csv").write_text("filepath,caption\nbad.jpg,x\n")
    with pytest.raises(ConfigError, match=r"c\.csv:2: cannot read image"):
        CaptionFileDataset(read_caption_table(tmp_path / "c.csv"))[0]


# --------------------------------------------------------------------------- pipeline


def test_clip_preprocess_and_eval_batches(tmp_path):
    transform = clip_preprocess(image_size=32)
    data = imagenet_v2(tree(tmp_path / "v2", [5, 9]), transform)
    batches = list(data.batches(3))
    assert [len(labels) for _, labels, _ in batches] == [3, 1]
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert torch.cat([b[1] for b in batches]).tolist() == [5, 5, 9, 9]
    loader = make_loader(data, batch_size=4, train=False, num_workers=0)
    assert not loader.drop_last and not loader.persistent_workers


def test_wnid_asset_matches_timm_when_installed():
    info = pytest.importorskip("timm.data._info", reason="timm not installed").__path__[0]
    with open(f"{info}/imagenet_synsets.txt") as handle:
        assert tuple(line.strip() for line in handle if line.strip()) == WNIDS


def test_clip_preprocess_follows_the_model_config():
    from harness.models.clip import create_model

    model, _ = create_model("digit-vit-t", None)
    transform = clip_preprocess(model)
    assert transform(Image.new("RGB", (50, 40))).shape == (3, 32, 32)  # the model's image size
    assert "RandomResizedCrop" in repr(clip_preprocess(model, train=True))


def test_zero_shot_evaluation_through_predict_logits(tmp_path):
    """The evaluator's ``predict_logits`` runs on a folder set; projection then gives a 200-class-style report."""
    from harness.models.clip import create_model, encode_images
    from harness.trial.set_reports import predict_logits

    model, _ = create_model("digit-vit-t", None)
    torch.manual_seed(0)  # a random 1000-way head on the image features stands in for the zero-shot head
    head = torch.nn.Linear(encode_images(model.eval(), torch.zeros(1, 3, 32, 32)).shape[1], 1000)
    data = imagenet_a(tree(tmp_path / "a", [WNIDS[i] for i in PICK], per_class=1), clip_preprocess(model))
    logits = predict_logits(model, head, data, batch_size=3)
    assert logits.shape == (4, 1000)
    report = set_report(logits, data)
    assert report["n"] == 4 and len(report["reliability"]["count"]) == 15
    assert report["confidence"] >= 1 / 4  # a 4-way softmax, not a 1000-way one


def test_epoch_sampler_reshuffles_and_splits_ranks():
    one = EpochSampler(10, seed=1)
    first = [i for _, i in one]
    one.set_epoch(1)
    second = list(one)
    assert sorted(first) == list(range(10)) and [i for _, i in second] != first and second[0][0] == 1
    ranks = [EpochSampler(10, seed=1, num_replicas=3, rank=r) for r in range(3)]
    keys = [i for sampler in ranks for _, i in sampler]
    assert all(len(s) == 4 for s in ranks) and len(keys) == 12 and set(keys) == set(range(10))
