import pytest

from strop.memory.records import ModelStatus, ModelVersionRecord
from strop.training.promotion import PromotionError, PromotionSettings, decide, promote, reject, rollback

KEY = "arithmetic/heldout"


def _v(
    name: str,
    acc: float | None,
    parent: str | None = None,
    status: ModelStatus = ModelStatus.CANDIDATE,
    n: int = 100,
) -> ModelVersionRecord:
    metrics = {} if acc is None else {f"{KEY}/pass@1": acc, f"{KEY}/n_tasks": n}
    return ModelVersionRecord(
        id=name, name=name, lineage="base", path="/m", parent_id=parent, status=status, metrics=metrics
    )


def test_gate_needs_the_margin() -> None:
    base = _v("base", 0.10, status=ModelStatus.BASE)
    s = PromotionSettings(margin=0.05)
    assert decide(_v("c1", 0.16, "base"), base, KEY, s).promote
    assert decide(_v("c2", 0.15, "base"), base, KEY, s).promote  # exactly the margin counts
    d = decide(_v("c3", 0.14, "base"), base, KEY, s)
    assert not d.promote and "does not beat" in d.reason


def test_a_tie_promotes_only_when_the_recipe_asks() -> None:
    """At margin 0 a tie used to promote, and the reason then said 'beats'."""
    base = _v("base", 0.25, status=ModelStatus.BASE)
    d = decide(_v("c", 0.25, "base"), base, KEY, PromotionSettings(margin=0.0))
    assert not d.promote and "only ties" in d.reason and "beats" not in d.reason
    d = decide(_v("c", 0.25, "base"), base, KEY, PromotionSettings(margin=0.0, promote_on_tie=True))
    assert d.promote and "ties parent" in d.reason and "beats" not in d.reason
    assert decide(_v("c", 0.26, "base"), base, KEY, PromotionSettings(margin=0.0)).promote
    # with a margin, a tie is simply short of it
    d = decide(_v("c", 0.25, "base"), base, KEY, PromotionSettings(margin=0.02, promote_on_tie=True))
    assert not d.promote and "does not beat" in d.reason


def test_a_recipe_sets_promote_on_tie() -> None:
    from strop.training.recipe import recipe_from_dict

    stage = {"name": "s", "train": {"kind": "sft"}, "eval": {"margin": 0.0, "promote_on_tie": True}}
    r = recipe_from_dict({"name": "r", "roles": {"policy": "tiny"}, "stages": [stage]})
    assert r.stages[0].eval is not None and r.stages[0].eval.promote_on_tie


def test_gate_refuses_to_compare_what_was_not_measured_alike() -> None:
    base = _v("base", 0.10, status=ModelStatus.BASE)
    with pytest.raises(PromotionError, match="strop eval"):
        decide(_v("c", None, "base"), base, KEY)
    with pytest.raises(PromotionError, match="different numbers of tasks"):
        decide(_v("c", 0.5, "base", n=50), base, KEY)


def test_promote_reject_rollback_in_the_registry(store) -> None:
    store.register_model(_v("base", 0.1, status=ModelStatus.BASE))
    store.register_model(_v("c1", 0.3, "base"))
    store.register_model(_v("c2", 0.5, "c1"))
    assert promote(store, "c1").status == ModelStatus.PROMOTED
    assert promote(store, "c2").status == ModelStatus.PROMOTED
    assert store.current_model("base").id == "c2"
    demoted, current = rollback(store, "base")
    assert demoted.id == "c2" and demoted.status == ModelStatus.REJECTED and current.id == "c1"
    rollback(store, "base")
    assert store.current_model("base").id == "base"
    with pytest.raises(PromotionError, match="nothing promoted"):
        rollback(store, "base")
    with pytest.raises(PromotionError, match="strop models list"):
        reject(store, "nope")
