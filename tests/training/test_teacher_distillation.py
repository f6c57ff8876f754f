"""Distillation from a frozen teacher (`teacher_checkpoint`, `teacher_weight`,
`teacher_temperature`): the loss by hand, the teacher rebuilt from a training checkpoint
and frozen, the Trainer adding the term to `aux_loss`, and one clear error per bad key."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.data.preprocessing import Preprocessing
from dynamicnets.errors import ConfigError
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.models.pretrained import pretrained_weights
from dynamicnets.training.teacher import TeacherDistillation, load_teacher, teacher_kl_loss

# ViTs for 1x8x8 digits: 2x2 patches (16 tokens), 2 blocks of width 16
VIT_ARGS = {"img_size": 8, "patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2}


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(name="run", model="vit_cifar", model_args=dict(VIT_ARGS), data="digits", epochs=1,
                  batch_size=32, optimizer="adamw", lr=1e-3, device="cpu", out_dir=str(tmp_path),
                  progress=False, max_steps_per_epoch=2, threads=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A static ViT trained 2 steps on digits, as the Trainer writes it."""
    out = tmp_path_factory.mktemp("teacher")
    Trainer(config(out, name="vit")).fit()
    return out / "vit" / "best.pt"


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_kl_loss_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]], requires_grad=True)
    t = 2.0
    p_t, p_s = F.softmax(teacher / t, dim=-1), F.softmax(student / t, dim=-1)
    expected = 0.5 * t ** 2 * (p_t * (p_t.log() - p_s.log())).sum(dim=-1).mean()
    loss = teacher_kl_loss(student, teacher, temperature=t, weight=0.5)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None  # the teacher gets no gradient
    assert float(teacher_kl_loss(teacher.detach(), teacher.detach())) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ConfigError, match="do not match"):
        teacher_kl_loss(student, teacher[:, :2])


def test_teacher_is_rebuilt_frozen_and_in_eval_mode(teacher_path):
    teacher = load_teacher(teacher_path, "cpu", num_classes=10, input_shape=(1, 8, 8))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    saved = torch.load(teacher_path, weights_only=True)["model"]
    for key, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, saved[key]), key


def test_a_student_that_is_its_teacher_has_no_distillation_loss(tmp_path, teacher_path):
    """Initialised from the teacher and barely moved: the KL term is ~0, and the logged
    aux_loss is that term (a static student has no other)."""
    cfg = config(tmp_path, name="same", lr=1e-9, max_steps_per_epoch=1, init_from=str(teacher_path),
                 teacher_checkpoint=str(teacher_path), teacher_weight=1.0)
    trainer = Trainer(cfg)
    trainer.fit()
    assert metrics(tmp_path / "same")["aux_loss"] == pytest.approx(0.0, abs=1e-6)


def test_the_trainer_adds_the_term_and_never_trains_the_teacher(tmp_path, teacher_path):
    before = torch.load(teacher_path, weights_only=True)["model"]
    off = Trainer(config(tmp_path, name="off", seed=1))
    off.fit()
    on = Trainer(config(tmp_path, name="on", seed=1, teacher_checkpoint=str(teacher_path), teacher_weight=2.0,
                        teacher_temperature=3.0))
    on.fit()
    assert off.teacher is None and metrics(tmp_path / "off")["aux_loss"] == 0.0
    assert metrics(tmp_path / "on")["aux_loss"] > 0.0
    # the teacher is not optimised and keeps its weights
    optimised = {id(p) for group in on.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in on.teacher.teacher.parameters()}
    for key, tensor in on.teacher.teacher.state_dict().items():
        assert torch.equal(tensor, before[key]), key
    # weight 0: the checkpoint is not even read
    assert Trainer(config(tmp_path, name="zero", teacher_checkpoint=str(tmp_path / "nowhere.pt"))).teacher is None


def test_dynamic_vit_fine_tunes_from_its_static_teacher(tmp_path, teacher_path):
    """DynamicViT's recipe in small: init_from the static ViT, distilled from it, ratio loss."""
    cfg = config(tmp_path, name="dyn", model="dynamic_vit_cifar", init_from=str(teacher_path),
                 teacher_checkpoint=str(teacher_path), teacher_weight=0.5)
    trainer = Trainer(cfg)
    assert isinstance(trainer.teacher, TeacherDistillation)
    record = trainer.fit()
    assert record["aux_loss"] > 0 and record["val_mean_flops"] < create_model("vit_cifar", in_chans=1, num_classes=10,
                                                                             **VIT_ARGS).flops((1, 8, 8))


def _checkpoint(path, name: str, num_classes: int = 10, input_shape=(1, 8, 8)) -> str:
    model = create_model(name, num_classes=num_classes, in_chans=input_shape[0], **VIT_ARGS)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": name, "model_args": dict(VIT_ARGS),
                           "num_classes": num_classes, "input_shape": list(input_shape)})
    return str(path)


@pytest.mark.parametrize("case,match", [
    ("missing", "checkpoint file not found"),
    ("not_a_checkpoint", "cannot load the teacher"),
    ("dynamic", "dynamic model"),
    ("classes", "3-class 'vit_cifar', but the student classifies 10"),
    ("shape", r"trained on inputs \(3, 8, 8\)"),
])
def test_a_bad_teacher_is_one_config_error_naming_the_key(tmp_path, case, match):
    path = {
        "missing": lambda: str(tmp_path / "nowhere.pt"),
        "not_a_checkpoint": lambda: (save_checkpoint(tmp_path / "x.pt", {"epoch": 1}), str(tmp_path / "x.pt"))[1],
        "dynamic": lambda: _checkpoint(tmp_path / "d.pt", "dynamic_vit_cifar"),
        "classes": lambda: _checkpoint(tmp_path / "c.pt", "vit_cifar", num_classes=3),
        "shape": lambda: _checkpoint(tmp_path / "s.pt", "vit_cifar", input_shape=(3, 8, 8)),
    }[case]()
    with pytest.raises(ConfigError, match=r"key 'teacher_checkpoint'.*" + match):
        Trainer(config(tmp_path, teacher_checkpoint=path, teacher_weight=1.0))


@pytest.mark.parametrize("overrides,key", [
    ({"teacher_weight": 1.0}, "teacher_checkpoint"),
    ({"teacher_checkpoint": "", "teacher_weight": 1.0}, "teacher_checkpoint"),
    ({"teacher_checkpoint": "t.pt", "teacher_weight": -1.0}, "teacher_weight"),
    ({"teacher_checkpoint": "t.pt", "teacher_weight": float("nan")}, "teacher_weight"),
    ({"teacher_checkpoint": "t.pt", "teacher_weight": 1.0, "teacher_temperature": 0.0}, "teacher_temperature"),
])
def test_bad_teacher_keys_are_refused_by_the_config(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        config(tmp_path, **overrides)


def test_a_shipped_model_is_a_teacher():
    teacher = load_teacher("pretrained:resnet20:cifar10", num_classes=10, input_shape=(3, 32, 32))
    shipped = create_model("resnet20", pretrained="cifar10")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), shipped.state_dict().values()))


@pytest.mark.parametrize("spec,match", [
    ("pretrained:resnet20", "expected 'pretrained:MODEL:TAG'"),
    ("pretrained:resnet20:imagenet", "imagenet"),
    ("pretrained:convnet_aig_resnet:cifar10", "dynamic model"),
])
def test_a_bad_shipped_teacher_names_the_key(spec, match):
    with pytest.raises(ConfigError, match=r"key 'teacher_checkpoint'.*" + match):
        load_teacher(spec, num_classes=10, input_shape=(3, 32, 32))


def test_a_shipped_teacher_must_fit_the_student():
    with pytest.raises(ConfigError, match=r"trained on inputs \(3, 32, 32\), but the student's are \(1, 8, 8\)"):
        load_teacher("pretrained:resnet20:cifar10", num_classes=10, input_shape=(1, 8, 8))


def test_a_teacher_trained_on_other_preprocessing_is_refused():
    prep = pretrained_weights("resnet20", "cifar10").preprocessing
    same = load_teacher("pretrained:resnet20:cifar10", num_classes=10, input_shape=(3, 32, 32), preprocessing=prep)
    assert not same.training
    unnormalised = dataclasses.replace(prep, mean=None, std=None)
    with pytest.raises(ConfigError, match=r"key 'teacher_checkpoint'.*prepared as uint8 pixels / 255, mean .*"
                                          r"student's are prepared as uint8 pixels / 255, input \(3, 32, 32\)"):
        load_teacher("pretrained:resnet20:cifar10", num_classes=10, input_shape=(3, 32, 32),
                     preprocessing=unnormalised)


def test_a_checkpoint_teacher_is_checked_against_the_students_preprocessing(teacher_path):
    recorded = Preprocessing.from_dict(torch.load(teacher_path, weights_only=True)["preprocessing"])
    load_teacher(teacher_path, num_classes=10, input_shape=(1, 8, 8), preprocessing=recorded)
    other = dataclasses.replace(recorded, scale=recorded.scale * 2)
    with pytest.raises(ConfigError, match=r"key 'teacher_checkpoint'.*the student's are prepared as"):
        load_teacher(teacher_path, num_classes=10, input_shape=(1, 8, 8), preprocessing=other)


def test_an_older_teacher_checkpoint_is_checked_by_its_data_spec(tmp_path, teacher_path):
    """A checkpoint written before checkpoints recorded their preprocessing: its data spec
    (digits) tells it; a data set load_data does not read leaves it unchecked."""
    ckpt = torch.load(teacher_path, weights_only=True)
    recorded = Preprocessing.from_dict(ckpt.pop("preprocessing"))
    older = tmp_path / "older.pt"
    save_checkpoint(older, ckpt)
    other = dataclasses.replace(recorded, scale=recorded.scale * 2)
    with pytest.raises(ConfigError, match=r"key 'teacher_checkpoint'.*the student's are prepared as"):
        load_teacher(older, num_classes=10, input_shape=(1, 8, 8), preprocessing=other)
    load_teacher(older, num_classes=10, input_shape=(1, 8, 8), preprocessing=recorded)
    unknown = tmp_path / "unknown.pt"
    save_checkpoint(unknown, {**ckpt, "data": "my_own_set"})
    load_teacher(unknown, num_classes=10, input_shape=(1, 8, 8), preprocessing=other)
