"""The method registry and the methods' options."""
import pytest
import torch

from dept import build_learner
from dept.methods import METHODS, PromptMethod, register_method
from dept.methods.coop import CoOpOptions
from tests.dept.conftest import BASE, NEW


def test_a_new_method_is_one_registered_class(clip):
    from dataclasses import dataclass

    from dept.methods.base import MethodOptions

    @dataclass(frozen=True)
    class FixedOptions(MethodOptions):
        phrase: str = "a photo of a"

    @register_method("fixed-prompt-test")
    class FixedPrompt(PromptMethod):
        Options = FixedOptions

        def __init__(self, encoder, options, *, classnames, dataset, embed_dim):
            super().__init__(encoder, options, classnames=classnames, dataset=dataset, embed_dim=embed_dim)
            self.ctx = torch.nn.Parameter(encoder.word_embeddings(options.phrase))

        def text_features(self, encoder, classes, image_features=None, *, chunk_size=None):
            return encoder(self.ctx, classes, chunk_size=chunk_size)

    try:
        learner = build_learner("fixed-prompt-test", clip, BASE, seed=0)
        assert learner.itm_logits(torch.randn(2, clip.embed_dim), BASE).shape == (2, len(BASE))
    finally:
        METHODS.pop("fixed-prompt-test")
    assert {"coop", "cocoop", "kgcoop"} <= set(METHODS)


def test_method_options_are_checked(clip):
    with pytest.raises(ValueError, match="unknown option"):
        build_learner("coop", clip, BASE, method_options={"n_context": 4})
    with pytest.raises(ValueError, match="unknown prompt method"):
        build_learner("maple", clip, BASE)
    assert CoOpOptions().n_ctx == 16


def test_class_specific_coop_has_one_context_per_class(clip):
    learner = build_learner("coop", clip, BASE, method_options={"class_specific": True, "n_ctx": 4}, seed=0)
    assert learner.method.ctx.shape == (len(BASE), 4, learner.encoder.width)
    with pytest.raises(ValueError, match="class-specific"):
        learner.itm_logits(torch.randn(2, clip.embed_dim), NEW)


def test_kgcoop_uses_dataset_template():
    from dept.datasets import kgcoop_template

    assert kgcoop_template("DTD") == "a photo of a {}, a type of texture."
    assert kgcoop_template("EuroSAT") == "a centered satellite photo of {}."
    assert kgcoop_template("Caltech101") == "a photo of a {}."
