"""One source of truth per method: its card (method_cards.yaml). The registry, the schema, the run defaults, the
classes' flags and the report labels all agree with it."""
from __future__ import annotations

import inspect

import pytest

from metarepro import methods, models
from metarepro.cards import cards, with_flag
from metarepro.config import ANY_TRAIN_WAYS, NOT_META_TRAINED, PRETRAINED_METHODS, load_schema, validate_config
from metarepro.report.tables import method_label


def test_every_registered_method_has_a_card_and_every_card_a_class():
    assert list(cards()) == list(methods.METHODS)
    for c in cards().values():
        assert c.label and c.citation


@pytest.mark.parametrize("name", list(cards()))
def test_constructors_carry_no_defaults_of_card_hyperparameters(name):
    """The card is the only place a default is written (methods.build fills it in): every card hyperparameter is a
    required argument of its class's constructor, so a class used directly cannot run with a second default."""
    params = inspect.signature(methods.METHODS[name].__init__).parameters
    for hp in cards()[name].hparams:
        assert hp in params, f"{name}: card hyperparameter {hp!r} is not a constructor argument"
        assert params[hp].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), \
            f"{name}.{hp}: {params[hp].kind}"
        assert params[hp].default is inspect.Parameter.empty, \
            f"{name}.{hp}: the constructor has a default ({params[hp].default!r}); the card's is the only one"


def test_build_fills_the_card_defaults():
    mlp = lambda: models.build("mlp", (1,), 1)   # noqa: E731
    assert methods.build("maml", mlp(), "regression").eval_inner_steps == 10
    assert methods.build("metasgd", mlp(), "regression").eval_inner_steps == 1
    assert methods.build("mamlpp", mlp(), "regression").eval_inner_steps == 5
    assert methods.build("pamela", mlp(), "regression", inner_steps=3).eval_inner_steps == 10
    assert methods.build("metalstm", mlp(), "regression", inner_steps=8).eval_inner_steps == 8   # null = inner_steps


def test_schema_blocks_and_config_defaults_come_from_the_cards():
    schema = load_schema()
    for name, c in cards().items():
        block = schema["$defs"][f"method_{name}"]
        assert set(block["properties"]) == {"addons", *c.hparams}
        assert schema["$defs"]["experiment"]["properties"]["methods"]["properties"][name] == {"$ref": f"#/$defs/method_{name}"}
    graph_only = {n for n, c in cards().items() if c.graph_only}
    cfg = validate_config({"experiments": {
        "e": {"dataset": "omniglot", "backbone": "conv4", "ways": 5, "shots": [1],
              "methods": {n: None for n in cards() if n not in graph_only}},
        "g": {"dataset": "synthetic_cycle", "backbone": "gnn", "ways": 3, "shots": [1],
              "methods": {n: None for n in graph_only}}}})
    for name, c in cards().items():
        assert cfg["experiments"]["g" if name in graph_only else "e"]["methods"][name] == c.defaults(), name


def test_flags_and_labels_derive_from_the_cards():
    assert PRETRAINED_METHODS == with_flag("needs_pretrained") == {"finetune", "nearest_neighbor", "mtl"}
    assert NOT_META_TRAINED == {"finetune", "nearest_neighbor"}
    assert ANY_TRAIN_WAYS == {"protonet", "matchingnet", "amfs"}
    for name, cls in methods.METHODS.items():
        assert cls.needs_pretrained == cards()[name].needs_pretrained
        assert cls.meta_trainable == cards()[name].meta_trainable
        assert method_label(name) == cards()[name].label


def test_fomaml_block_has_no_first_order_switch():
    """FO-MAML is first order by definition; its block used to accept `first_order` (MAML's), which its
    constructor rejected at training time."""
    with pytest.raises(Exception, match="first_order"):
        validate_config({"experiments": {"e": {"dataset": "omniglot", "backbone": "conv4", "ways": 5, "shots": [1],
                                               "methods": {"fomaml": {"first_order": False}}}}})
