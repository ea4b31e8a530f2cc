"""Paper setup 'plasticity' on Qwen3-8B (see fst_paper.py for the numbers and their sources)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fst_paper


def get_config():
    return fst_paper.get_config("plasticity")
