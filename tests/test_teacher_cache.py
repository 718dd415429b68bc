"""The EMA teacher's cached caption embeddings: a CaRot step gives the loss terms and gradients of the
uncached computation, and the cache never outlives the teacher weights it was computed with.

The reference below encodes every image's caption (no de-duplication, no cache) with the teacher
and the student directly, and composes the terms from ``harness.trial.losses`` by hand.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from gradients import assert_gradients_match

import harness.trial.ema as ema
from harness.core.config import LossConfig
from harness.data.captions import CAPTION_TEMPLATES, DIGIT_NAMES
from harness.models.clip import (
    create_model,
    encode_images,
    encode_texts,
    text_projection,
    visual_projection,
)
from harness.trial.batches import CaptionTokens
from harness.trial.ema import EMATeacher
from harness.trial.losses import (
    contrastive_loss,
    cross_norm_penalty,
    distillation_loss,
    orthogonality_penalty,
)
from harness.trial.microbatches import MicroBatches

LOSS = LossConfig(label_smoothing=0.1, oc_weight=0.2, sd_weight=0.5, cross_weight=0.05)
CPU = torch.device("cpu")
# float32 (the terms compute in it); cached rows were encoded in other batches than the reference's,
# which the text tower's row independence makes equal up to summation order (gradients: relative to
# each tensor's largest entry, see gradients.assert_gradients_match)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def _batch(seed: int, n: int = 12) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Random images, each with a template caption of its random class (so captions repeat)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    templates = torch.randint(0, len(CAPTION_TEMPLATES), (n,), generator=generator)
    captions = [CAPTION_TEMPLATES[t].format(DIGIT_NAMES[y]) for t, y in zip(templates.tolist(), labels.tolist())]
    return torch.randn(n, 3, 32, 32, generator=generator), captions, labels


@pytest.fixture
def models():
    """A student and an unrelated random teacher (the distillation term then has a gradient)."""
    torch.manual_seed(0)
    student, tokenizer = create_model("digit-vit-t", None)
    torch.manual_seed(1)
    teacher = EMATeacher(create_model("digit-vit-t", None)[0])
    return student.train(), teacher, tokenizer


def _teacher_outputs(teacher: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    with torch.no_grad():
        return encode_images(teacher, images), encode_texts(teacher, tokens), teacher.logit_scale.exp()


def _reference(student, tokenizer, images, captions, teacher_outputs) -> dict[str, torch.Tensor]:
    """The terms computed from scratch: every image's caption encoded, the teacher's outputs as given."""
    tokens = tokenizer(captions)
    image, text, scale = encode_images(student, images), encode_texts(student, tokens), student.logit_scale.exp()
    teacher_images, teacher_texts, teacher_scale = teacher_outputs
    student_logits, teacher_logits = scale * image @ text.T, teacher_scale * teacher_images @ teacher_texts.T
    return {
        "contrastive": contrastive_loss(image, text, scale, LOSS.label_smoothing),
        "oc": orthogonality_penalty(visual_projection(student)),
        "cross": cross_norm_penalty(visual_projection(student), text_projection(student)),
        "sd": distillation_loss(student_logits, student_logits.T, teacher_logits, teacher_logits.T),
    }


def _cached(student, teacher, tokenizer, images, captions, labels) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The trainer's step (``MicroBatches``, one micro-batch): its terms (and weighted ``loss``) and gradients."""
    student.zero_grad(set_to_none=True)
    step = MicroBatches(student, 1, nullcontext, torch.amp.GradScaler("cpu", enabled=False))
    terms = step.contrastive(student, images, CaptionTokens(tokenizer, CPU)(captions), labels, LOSS, teacher)
    values = {name: value.item() for name, value in terms.items()}
    return values, {name: param.grad.clone() for name, param in student.named_parameters() if param.grad is not None}


def _terms_and_grads(student, terms: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    student.zero_grad(set_to_none=True)
    total = sum(terms[name] * weight for name, weight in
                {"contrastive": 1.0, "oc": LOSS.oc_weight, "cross": LOSS.cross_weight, "sd": LOSS.sd_weight}.items())
    total.backward()
    values = {name: value.item() for name, value in terms.items()} | {"loss": total.item()}
    return values, {name: param.grad.clone() for name, param in student.named_parameters() if param.grad is not None}


def _assert_same(actual, expected) -> None:
    (values, grads), (expected_values, expected_grads) = actual, expected
    assert values.keys() == expected_values.keys()
    for name, value in expected_values.items():
        assert values[name] == pytest.approx(value, rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"]), name
    assert_gradients_match(grads, expected_grads, **TOLERANCE)


class _CountEncodings:
    """Counts the captions the teacher's text tower encodes through the cache."""

    def __init__(self, monkeypatch):
        self.rows = 0
        original = ema.encode_texts

        def counted(model, tokens):
            self.rows += len(tokens)
            return original(model, tokens)

        monkeypatch.setattr(ema, "encode_texts", counted)


def test_a_cached_carot_step_gives_the_uncached_terms_and_gradients(models, monkeypatch):
    student, teacher, tokenizer = models
    encodings = _CountEncodings(monkeypatch)
    first, second = _batch(seed=0), _batch(seed=1)
    new_captions = [len(set(first[1])), 0, len(set(second[1]) - set(first[1]))]
    assert len(set(first[1])) < len(first[1]) and 0 < new_captions[2] < len(set(second[1]))  # captions repeat
    for (images, captions, labels), new in zip((first, first, second), new_captions):  # cold, warm, partly new
        seen = encodings.rows
        cached = _cached(student, teacher, tokenizer, images, captions, labels)
        assert encodings.rows - seen == new  # only captions the cache lacks are encoded, each once
        outputs = _teacher_outputs(teacher.model, images, tokenizer(captions))
        _assert_same(cached, _terms_and_grads(student, _reference(student, tokenizer, images, captions, outputs)))


def test_an_ema_update_or_a_checkpoint_load_drops_the_cache(models):
    student, teacher, tokenizer = models
    images, captions, labels = _batch(seed=2)
    tokens = tokenizer(captions)
    before = _teacher_outputs(teacher.model, images, tokens)
    state = {name: value.clone() for name, value in teacher.state_dict().items()}
    _cached(student, teacher, tokenizer, images, captions, labels)  # fills the cache with the teacher as it is
    teacher.update(student, momentum=0.5)
    after = _teacher_outputs(teacher.model, images, tokens)
    stale = (after[0], before[1], after[2])  # the moved teacher's images against its old caption embeddings

    terms, _ = _cached(student, teacher, tokenizer, images, captions, labels)
    expected = _reference(student, tokenizer, images, captions, after)["sd"].item()
    assert terms["sd"] == pytest.approx(expected, rel=1e-5)
    stale_sd = _reference(student, tokenizer, images, captions, stale)["sd"].item()
    assert abs(stale_sd - expected) > 1e-3 * abs(expected)  # a stale cache would show

    teacher.load_state_dict(state)  # as a resumed run does
    terms, _ = _cached(student, teacher, tokenizer, images, captions, labels)
    assert terms["sd"] == pytest.approx(_reference(student, tokenizer, images, captions, before)["sd"].item(),
                                               rel=1e-5)


def test_a_replayed_log_rebuilds_the_cache_bit_for_bit(models):
    """What a resumed run does: the same captions encoded in the same groups give the very same rows, which
    encoding them in other groups need not (float rounding depends on a batch's composition)."""
    student, teacher, tokenizer = models
    state = {name: value.clone() for name, value in teacher.state_dict().items()}
    batches = [CaptionTokens(tokenizer, CPU)(_batch(seed, n=5)[1]) for seed in (4, 5, 6)]
    for batch in batches:
        teacher.caption_embeddings(batch.texts, batch.tokens)
    log = teacher.encoded_captions()
    seen: set[str] = set()
    for batch, group in zip(batches, log, strict=True):  # each batch encoded its new captions, and only those
        assert group == [caption for caption in batch.texts if caption not in seen]
        seen |= set(batch.texts)

    resumed = EMATeacher(student)  # other weights, and a cache of its own
    resumed.caption_embeddings(batches[0].texts, batches[0].tokens)
    resumed.load_state_dict(state)
    resumed.replay_captions(log, lambda group: CaptionTokens(tokenizer, CPU)(group).tokens)
    assert resumed.encoded_captions() == log
    for batch in batches:
        assert torch.equal(resumed.caption_embeddings(batch.texts, batch.tokens),
                           teacher.caption_embeddings(batch.texts, batch.tokens))
    assert resumed.encoded_captions() == log  # nothing was left to encode


def test_the_cache_starts_again_when_full(models, monkeypatch):
    student, teacher, tokenizer = models
    encodings = _CountEncodings(monkeypatch)
    monkeypatch.setattr(ema, "MAX_CACHED_CAPTIONS", 6)
    captions = [CAPTION_TEMPLATES[0].format(name) for name in DIGIT_NAMES[:8]]
    tokens = tokenizer(captions)
    with torch.no_grad():
        expected = encode_texts(teacher.model, tokens)
    for part, encoded in ((slice(0, 4), 4), (slice(4, 8), 4), (slice(4, 8), 0), (slice(0, 4), 4)):
        seen = encodings.rows  # 4 + 4 > 6: the first four make room for the next four
        torch.testing.assert_close(teacher.caption_embeddings(captions[part], tokens[part]), expected[part], **TOLERANCE)
        assert encodings.rows - seen == encoded


def test_the_weighted_loss_of_the_cached_terms_is_the_trainers(models):
    """The step backpropagates the terms weighted by the λs, as the reference does."""
    student, teacher, tokenizer = models
    images, captions, labels = _batch(seed=3)
    terms, _ = _cached(student, teacher, tokenizer, images, captions, labels)
    expected = terms["contrastive"] + 0.2 * terms["oc"] + 0.05 * terms["cross"] + 0.5 * terms["sd"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-6)
