"""Add-on cards: what the config validator, the workflow and the reports need to know about each add-on, torch-free
(Snakemake imports it). The code is bound to the name in the registries of metarepro.addons (SAMPLERS, AGGREGATORS,
TERMS); tests/unit/test_addons.py checks that the cards and the registries name the same add-ons with the same kinds
and hooks.

Derived from the cards: metarepro.config.ADDON_KINDS (the names a method name may carry) and its checks of
combinations, the config schema's `addons` block and each add-on's settings (`$defs/addon_<name>`), the report
labels ("MAML + CML", "CML†") and the "Our choices" notes under the tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("sampler", "aggregator", "term")


@dataclass(frozen=True)
class AddonCard:
    name: str
    kind: str                       # "sampler" | "aggregator" | "term" (metarepro.addons.KINDS' registries)
    label: str                      # as tables print it after the method's: "MAML + CML"
    citation: str = ""
    default: bool = False           # its kind's default: what a run without such an add-on gets; never in a name
    # a JSON-schema fragment per setting, as written in a method's block: `addons: {<name>: {...}}`; `default` only
    # where the code fills one in (a default here is written into every resolved run config, and metarepro.addons
    # fills it in for a setting its block omits: the constructors carry no defaults of their own)
    hparams: dict[str, dict] = field(default_factory=dict)
    choices: str = ""               # what its paper leaves open and we chose (printed under every table that uses it)
    on_graphs: bool = False         # tested on node classification (the GNN backbone)
    needs_classes: bool = False     # re-samples classes: refused on regression datasets
    # the setting that turns on its noise-matched control (a control run of an outer-loss term): {key: value}; the
    # control replaces the term's meta-gradient share after aggregation, so it needs the mean aggregator
    noise_control: dict = field(default_factory=dict)
    # the test-time hook of an outer-loss term that also predicts (OuterTerm.predicts_at_test): the name its scores
    # take as an add-on in report rows (`maml+cml_dagger`), their label, who predicts, and eval.json's key for them
    test_name: str = ""
    test_label: str = ""
    test_scorer: str = ""
    eval_key: str = ""

    @property
    def predicts_at_test(self) -> bool:
        return bool(self.test_name)

    def defaults(self) -> dict:
        """Every setting's default (what the add-on gets when its block omits the setting); a setting without one
        (cml's `control`) is left to the constructor."""
        return {k: v["default"] for k, v in self.hparams.items() if "default" in v}

    def schema(self) -> dict:
        """The JSON schema of its block under a method's `addons:`."""
        return {"type": ["object", "null"], "additionalProperties": False, "description": self.citation,
                "properties": {k: dict(v) for k, v in self.hparams.items()}}


_CARDS = (
    AddonCard("uniform", "sampler", "uniform", default=True,
              citation="every meta-batch drawn uniformly (Finn et al. 2017, Alg. 1)"),
    AddonCard("ht", "sampler", "HT", needs_classes=True,
              citation='Sun, Liu, Chua & Schiele 2019, "Meta-Transfer Learning for Few-Shot Learning", Sec. 4.2 '
                       "(hard-task meta-batch)",
              hparams={"hard_tasks": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                      "description": "tasks per hard meta-batch; null = the meta-batch size"}},
              choices="The official code never released the hard-task meta-batch; our reading of the paper: after "
                      "each ordinary meta-batch, each task's class with the lowest query accuracy after adaptation "
                      "(ties: the lowest label) joins a pool; once the pool holds N distinct classes, the next "
                      "meta-iteration trains on a hard meta-batch (as many tasks as the ordinary one) of N classes "
                      "drawn from the pool with fresh images, and the pool empties; hard meta-batches count as "
                      "iterations of the budget and are not mined."),
    AddonCard("mean", "aggregator", "mean", default=True,
              citation="the mean of the per-task meta-gradients (Finn et al. 2017, Alg. 1)"),
    AddonCard("oamfs", "aggregator", "O-AMFS",
              citation='"Fast Adaptation with Kernel and Gradient based Meta Learning" (arXiv:2411.00404), O-AMFS '
                       "(cosine-weighted meta-gradient; no settings)",
              choices="No code was published; the weighting is ours: c_i = mean over j ≠ i of cos(g_i, g_j), "
                      "w_i = (1 + c_i) / 2, meta-gradient = Σ w_i g_i / Σ w_i (the plain mean when every w_i is 0); "
                      "with CML, the cosines use the learner's parameters only and the weights apply to the "
                      "co-learner's too."),
    AddonCard("cml", "term", "CML", on_graphs=True,
              citation='Shin et al. 2024, "Cooperative Meta-Learning with Gradient Augmentation" (UAI), the co-learner',
              hparams={
                  "weight": {"type": "number", "minimum": 0, "default": 1.0, "description": "gamma = 1 (official code)"},
                  "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.001,
                         "description": "the co-learner's own Adam lr, 1e-3 (official code)"},
                  # no default: runs without a control keep the config they had before the control existed
                  "control": {"enum": ["none", "noise"],
                              "description": "noise: a control run. The co-learner trains as in CML, but its gradient "
                                             "on the learner's parameters is replaced by isotropic Gaussian noise of "
                                             "the same norm (per meta-step) on the feature extractor, the part that "
                                             "gradient reaches (not the head), so the learner sees CML's perturbation "
                                             "size without its direction"}},
              noise_control={"control": "noise"},
              test_name="cml_dagger", test_label="CML†", test_scorer="its co-learner", eval_key="colearner",
              choices="The co-learner (conv3×3-BN-ReLU, conv3×3-BN-ReLU-max-pool, linear; official code) reads the "
                      "feature map before the last pooling on the query set with the adapted weights, gets no "
                      "inner-loop update, weight γ = 1 and its own Adam at 1e-3; on a vector feature (the sinusoid "
                      "MLP's last hidden layer, the GNN's centre-node embedding) it is a small MLP. On methods that "
                      "embed support and query in one pass (ProtoNet, Matching Networks, AMFS, MTL) it reads that "
                      "pass's query rows; for MTL, the frozen pretrained backbone's feature map under the "
                      "meta-learned scaling and shifting, so its gradient reaches MTL's scales and shifts, not the "
                      "frozen weights."),
)

ADDON_CARDS: dict[str, AddonCard] = {c.name: c for c in _CARDS}
# the add-ons a method name may carry (`maml+cml`): name -> kind; the defaults are what a run has without one
ADDON_KINDS: dict[str, str] = {c.name: c.kind for c in _CARDS if not c.default}
DEFAULTS: dict[str, str] = {c.kind: c.name for c in _CARDS if c.default}
# the label of every name a report row's add-ons may carry: the add-ons' and their test-time hooks'
ADDON_LABELS: dict[str, str] = {**{c.name: c.label for c in _CARDS if not c.default},
                                **{c.test_name: c.test_label for c in _CARDS if c.test_name}}
GRAPH_ADDONS: frozenset[str] = frozenset(c.name for c in _CARDS if c.on_graphs)
TEST_HOOKS: dict[str, AddonCard] = {c.name: c for c in _CARDS if c.predicts_at_test}


def card(name: str) -> AddonCard:
    """The card of a registered add-on; unknown names get an error listing the known ones."""
    try:
        return ADDON_CARDS[name]
    except KeyError:
        raise KeyError(f"unknown add-on {name!r}; known: {', '.join(ADDON_CARDS)}") from None
