"""Written by experiments/study.py: the study's base config on task star_graph."""
import importlib.util

import ml_collections


def get_config():
    spec = importlib.util.spec_from_file_location("study_base_config", '/work/fresh_star/experiments/configs/study_math.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.task.name = "star_graph"
    c.task.kwargs = ml_collections.ConfigDict({"size": 'medium'})
    c.task.seed_prompt = ""
    return c
