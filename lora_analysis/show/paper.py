"""The paper's reference numbers and statements, as data: Hu et al. (2021), "LoRA: Low-Rank Adaptation of
Large Language Models", arXiv 2106.09685, Section 7 and Appendix H (GPT-3 175B).

Kept as printed (strings), so 70.0 stays 70.0. The findings and the report's side-by-side table read
them from here; nothing else types a number of the paper.
"""

from __future__ import annotations

import pandas as pd

MODEL = "GPT-3 175B"
LAYER = 48  # of 96: the layer Figures 3, 4 and 8 and Table 7 show
LAYERS = 96
TASKS = "WikiSQL/MultiNLI"
CONTEXT = f"Paper: {MODEL}, layer {LAYER} of {LAYERS}, {TASKS}."
COLUMN = f"paper (GPT-3, layer {LAYER})"

RANK_PAIR = (8, 64)  # Figure 3: the top direction of r = 8 in the r = 64 subspace
SEED_RANK = 64  # Figure 4: two seeds at r = 64
TABLE7_RANKS = (4, 64)

FIGURE3 = "> 0.5 (A)"  # phi(1, 64) of r = 8's top direction
FIGURE4 = "q has a higher intrinsic rank than v (A)"
FIGURE8 = "barely above 0.2"  # phi between the top 10% of W and the top 4 directions of dW
A_MOVED = "not reported"

# Table 7, per rank: ||dW||_F; ||U^T W V^T||_F for U, V of dW / W / random; the amplification factor.
TABLE7 = {4: ("6.91", "0.32 / 21.67 / 0.02", "21.5"), 64: ("3.57", "1.90 / 37.71 / 0.33", "about 2")}
TABLE7_W_NORM = "61.95"  # ||W||_F of the layer's W_q

TABLE6 = pd.DataFrame(
    [row.split() for row in ("WikiSQL q 68.8 69.6 70.5 70.4 70.0", "WikiSQL q+v 73.4 73.3 73.7 73.8 73.5",
                             "WikiSQL q+k+v+o 74.1 73.7 74.0 74.0 73.9", "MultiNLI q 90.7 90.9 91.1 90.7 90.7",
                             "MultiNLI q+v 91.3 91.4 91.3 91.6 91.4", "MultiNLI q+k+v+o 91.2 91.7 91.7 91.5 91.4")],
    columns=["task", "targets", "r=1", "r=2", "r=4", "r=8", "r=64"],
)
TABLE6_CAPTION = "Paper, Table 6: validation accuracy (%) against rank r per target set"
TABLE5 = pd.DataFrame(
    [row.split() for row in ("WikiSQL 70.4 70.0 73.0 73.2 71.4 73.7 73.7",
                             "MultiNLI 91.0 90.8 91.0 91.3 91.3 91.3 91.7")],
    columns=["task", "q (r=8)", "k (r=8)", "v (r=8)", "o (r=8)", "q+k (r=4)", "q+v (r=4)", "q+k+v+o (r=2)"],
)
TABLE5_CAPTION = "Paper, Table 5: validation accuracy (%) at a budget of 18M trainable parameters"
