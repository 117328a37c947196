"""Every transformer family memorises 128 lens-like images with random labels, as cnn_small does.

A model that cannot drive its training loss on 128 images below 0.1 cannot learn a data set: this
is the regression test of issue 22 (vit_tiny and deit_tiny reached a macro AUC of 0.59-0.64 on the
Model II replica where CNNs reach 0.99). Each model trains through lensnet.fit's optimiser with its
registry recipe (`train_defaults`) for 5 epochs of 20 steps (batch 32, 32 px). Without the
transformers' warm-up (`train.warmup_epochs=0`, lensnet's default before the fix) the tiny ViT ends
at loss 0.97; with it, 0.039 (numbers in lensnet.models.vit's docstring). CvT failed (1.153) because
its projections' BatchNorm kept Keras' momentum 0.99: in training mode the same weights were at
0.0014 (lensnet.models.cvt). Swin's row was smaller than the ViT's (4x the tokens at half the width, a
quarter of the parameters: 0.755); at the ViT row's grid and width it ends at 0.007, with no defect in its
blocks (test_models.py checks them against a reference Swin block). The paper's CCT sat at the label prior
(1.054): its ReLU/max-pool tokens share a large positive part and its blocks start near the identity
(truncated-normal 0.02 at width 64); lensnet's CCT centres the tokens (a BatchNorm after each tokenizer pool)
and starts the blocks Glorot-uniform as keras-hub's ViT: 0.074 (each alone: 0.453, 0.941; lensnet.models.cct).
"""

from __future__ import annotations

import pytest

from lensnet.bench.memorise import memorise

# Small enough for a CPU test, deep enough (4 blocks, 64 tokens) to show the failure.
TINY_TRANSFORMERS = {
    "vit_tiny": {"hidden_dim": 64, "num_layers": 4, "num_heads": 2, "patch_size": 4},  # MLP 768, as measured
    # the same size as the ViT row: with a 6x narrower MLP (128) DeiT ended at 0.113, and so does the ViT
    # at a narrower MLP (256: ViT 0.135, DeiT 0.096); see lensnet.models.deit
    "deit_tiny": {"hidden_dim": 64, "num_layers": 4, "num_heads": 2, "intermediate_dim": 768, "patch_size": 4},
    # the ViT row's token grid (patch 4: 8x8 tokens) and width (64); at patch 2 (16x16 tokens) and width 32, a
    # quarter of the ViT's parameters, Swin ended at 0.755 (see lensnet.models.swin)
    "swin_tiny": {"embed_dim": 64, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "patch_size": 4},
    "cvt_tiny": {"embed_dims": [32, 64, 64], "depths": [1, 1, 2], "num_heads": [1, 2, 2]},
    "cct_2": {"hidden_dim": 64, "num_layers": 2, "num_heads": 2, "tokenizer_filters": 32},
}


# Families that do not pass yet, with their final training loss (an expected failure each); none today.
NOT_MET: dict[str, float] = {}


@pytest.mark.slow  # about a minute per model on one free core
@pytest.mark.parametrize("name", ["cnn_small", *(
    pytest.param(n, marks=pytest.mark.xfail(reason=f"issue 22: final loss {NOT_MET[n]} > 0.1 with the recipe"))
    if n in NOT_MET else n for n in TINY_TRANSFORMERS)])
def test_memorises_128_images(name):
    # at the task's full rate: ViT's and DeiT's recipe also lowers it to 0.1x (learning_rate_scale), which lets
    # them learn the replica (deit_tiny: macro AUC 0.885 -> 0.955) but slows memorising random labels
    # (this DeiT row at 0.3x: 0.27 after the 100 steps; lensnet.models.registry.PLAIN_TRANSFORMER_RECIPE)
    result = memorise(name, overrides=TINY_TRANSFORMERS.get(name, {"filters": [16, 32, 64]}),
                      train={"learning_rate_scale": 1.0})
    assert result["final_loss"] < 0.1, result
    assert result["final_accuracy"] == 1.0, result


@pytest.mark.slow
def test_a_vit_with_locality_self_attention_memorises():
    # the diagonal masked and a learned temperature (lensnet.models.locality): 0.032, against 0.039 without
    result = memorise("vit_tiny", overrides={**TINY_TRANSFORMERS["vit_tiny"], "attention": "locality"},
                      train={"learning_rate_scale": 1.0})
    assert result["final_loss"] < 0.1 and result["final_accuracy"] == 1.0, result


@pytest.mark.slow
def test_a_plain_vit_without_warmup_does_not_memorise():
    """The defect itself, kept visible: the same ViT at lensnet's old defaults (no warm-up) fails."""
    result = memorise("vit_tiny", overrides=TINY_TRANSFORMERS["vit_tiny"],
                      train={"warmup_epochs": 0, "learning_rate_scale": 1.0})
    assert result["loss_after_step1"] > result["initial_loss"]  # the first full-size AdamW step hurts
    assert result["final_loss"] > 0.3, result


@pytest.mark.slow
def test_a_cvt_with_keras_default_batchnorm_momentum_does_not_memorise():
    """CvT's defect, kept visible: Keras' BatchNormalization momentum 0.99 (what the projections had) leaves
    the moving statistics near their initial values after 100 steps, so the trained weights fit in training
    mode and not in inference mode."""
    result = memorise("cvt_tiny", overrides={**TINY_TRANSFORMERS["cvt_tiny"], "bn_momentum": 0.99})
    assert result["final_loss_training_mode"] < 0.1, result
    assert result["final_loss"] > 0.5, result


@pytest.mark.slow
def test_the_papers_cct_does_not_memorise():
    """CCT's plateau, kept visible: with the paper's tokenizer (no norm) and truncated-normal(0.02) blocks the
    same row stays near the label prior (1.054, 0.004 only after 500 steps)."""
    result = memorise("cct_2", overrides={**TINY_TRANSFORMERS["cct_2"], "tokenizer_norm": False,
                                          "dense_initializer": None})
    assert result["final_loss"] > 0.5, result


@pytest.mark.parametrize("model, warmup", [("vit_tiny", 1.0), ("deit_tiny", 1.0), ("swin_tiny", 1.0),
                                           ("cvt_tiny", 1.0), ("cct_2", 1.0), ("cnn_small", 0.0)])
def test_fit_applies_the_model_recipe_and_the_user_still_wins(model, warmup):
    from lensnet.training.config import resolve_fit_config

    # the task presets set their own warm-up; the pretraining preset sets none
    config = resolve_fit_config("pretrain", overrides={"model": {"name": model}})
    assert config["train"]["warmup_epochs"] == warmup
    mine = resolve_fit_config("pretrain", overrides={"model": {"name": model}, "train": {"warmup_epochs": 0.5}})
    assert mine["train"]["warmup_epochs"] == 0.5
    assert resolve_fit_config("substructure", overrides={"model": {"name": model}})["train"]["warmup_epochs"] == 2


@pytest.mark.parametrize("model, scale", [("vit_tiny", 0.1), ("vit_small", 0.1), ("deit_tiny", 0.1),
                                          ("swin_tiny", 1.0), ("cvt_tiny", 1.0), ("cct_2", 1.0), ("cnn_small", 1.0)])
def test_plain_transformers_peak_at_a_fraction_of_the_tasks_learning_rate(model, scale):
    from lensnet.core.errors import LensnetError
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.optim import make_optimizer

    def peak(task: str, **train) -> float:
        config = resolve_fit_config(task, overrides={"model": {"name": model}, "train": {"epochs": 4, **train}})
        optimizer = make_optimizer(config["train"], steps_per_epoch=10)
        return float(optimizer._learning_rate(20))  # the cosine's peak: right after the warm-up (2 epochs)

    assert peak("substructure") == pytest.approx(1e-3 * scale, rel=1e-5)
    assert peak("lens_finding", warmup_epochs=2) == pytest.approx(2e-3 * scale, rel=1e-5)  # a preset's own rate
    assert peak("substructure", learning_rate=5e-4) == pytest.approx(5e-4 * scale, rel=1e-5)  # --lr is scaled too
    assert peak("substructure", learning_rate_scale=1.0) == pytest.approx(1e-3, rel=1e-5)  # the user wins
    with pytest.raises(LensnetError, match="train.learning_rate_scale must be a positive number"):
        resolve_fit_config("substructure", overrides={"model": {"name": model}, "train": {"learning_rate_scale": 0}})


def test_a_run_written_before_the_scale_resumes_at_the_tasks_rate(tmp_path):
    import yaml

    from lensnet.training.config import resolve_fit_config, resume_config

    config = resolve_fit_config("substructure", overrides={"model": {"name": "vit_tiny"}})
    assert config["train"]["learning_rate_scale"] == 0.1
    del config["train"]["learning_rate_scale"]  # what an older lensnet wrote
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(config))
    assert resume_config(str(tmp_path / "old"), {})["train"]["learning_rate_scale"] == 1.0


def test_weight_decay_skips_norms_biases_tokens_and_position_embeddings():
    import keras

    from lensnet.models import create_model
    from lensnet.training.config import FIT_DEFAULTS
    from lensnet.training.optim import make_optimizer

    backbone = create_model("deit_tiny", (16, 16, 1), **TINY_TRANSFORMERS["deit_tiny"])
    optimizer = make_optimizer({**FIT_DEFAULTS["train"], "weight_decay": 0.05}, 10)
    optimizer.build(backbone.trainable_variables)
    decayed = {v.path for v in backbone.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed and all(v.endswith("kernel") for v in decayed), sorted(decayed)
    names = {v.name for v in backbone.trainable_variables} - {v.name for v in backbone.trainable_variables
                                                              if v.path in decayed}
    assert {"class_token", "distillation_token", "position_embedding", "gamma", "beta", "bias"} <= names
    assert isinstance(optimizer, keras.optimizers.AdamW)
    locality = create_model("vit_tiny", (16, 16, 1), **TINY_TRANSFORMERS["vit_tiny"], attention="locality")
    temperatures = [v for v in locality.trainable_variables if v.name == "temperature"]
    assert len(temperatures) == 4 and not any(optimizer._use_weight_decay(v) for v in temperatures)


def test_a_warm_up_longer_than_half_the_schedule_is_flagged():
    from lensnet.training.optim import schedule_warning

    preset = {"schedule": "cosine", "warmup_epochs": 2, "epochs": 3}  # the substructure preset at --epochs 3
    assert "67% of this 3-epoch schedule" in schedule_warning(preset)
    assert schedule_warning({**preset, "epochs": 30}) is None
    assert schedule_warning({**preset, "warmup_epochs": 1.5}) is None  # exactly half: not flagged
    assert schedule_warning({**preset, "schedule": "constant"}) is None
    assert "reaches its peak only at epoch 3" in schedule_warning({**preset, "warmup_epochs": 5})
