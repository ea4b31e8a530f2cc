"""The five name registries (models, losses, advantages, tasks, reflection LMs) share one helper:
unknown names fail with the nearest registered one, and a duplicate registration is an error."""

from __future__ import annotations

import pytest

from fst_jax import gepa, models, rl, tasks
from fst_jax.registry import Registry, UnknownNameError, nearest


def test_registry_contract():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    assert reg.register("beta")(2) == 2
    assert reg.get("alpha") == 1 and "beta" in reg and reg.names() == ["alpha", "beta"]
    with pytest.raises(ValueError, match="widget 'alpha' is already registered"):
        reg.add("alpha", 3)
    assert reg.get("alpha") == 1  # the first entry survives the failed re-registration
    with pytest.raises(UnknownNameError) as e:
        reg.get("alpah")
    assert str(e.value) == "Unknown widget 'alpah'; did you mean 'alpha'? registered: alpha, beta"
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(KeyError, match=r"registered: alpha, beta$"):
        reg.get("zzzzzz")  # nothing near: no hint, still the list
    assert nearest("cipso", ["cispo", "grpo"]) == "cispo" and nearest("x", ["cispo"]) is None


@pytest.mark.parametrize(
    "get, bad, good",
    [
        (models.get_config, "smollm2_13m", "smollm2_135m"),
        (rl.get_loss, "cipso", "cispo"),
        (rl.get_advantage, "rlooo", "rloo"),
        (tasks.get_task, "maths", "math"),
        (gepa.get_reflection_lm, "opneai", "openai"),
    ],
)
def test_unknown_names_hint_the_nearest(get, bad, good):
    with pytest.raises(UnknownNameError, match=f"did you mean '{good}'"):
        get(bad)


def test_duplicates_are_errors_in_every_registry():
    from fst_jax.models.config import register

    with pytest.raises(ValueError, match="already registered"):
        register(models.get_config("smollm2_135m"))
    with pytest.raises(ValueError, match="already registered"):
        rl.losses.register_loss("cispo")(lambda x, cfg: (x, x))
    with pytest.raises(ValueError, match="already registered"):
        rl.advantages.register_advantage("grpo")(lambda r, g: r)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("math")(object)
    with pytest.raises(ValueError, match="already registered"):
        gepa.register_reflection_lm("local")(object)
    # and none of them replaced the original entry
    assert rl.get_loss("cispo").fn is rl.losses.cispo_loss
    assert models.get_config("smollm2_135m").num_layers == 30
