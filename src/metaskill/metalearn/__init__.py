"""Learning to learn across tasks: meta-training on a pool of tasks (issue 23).

A layer above ``methods/`` (it trains with the methods' LoRA machinery and hands its
results to them: an adapter for ``knn_demos``, a zero-shot scorer, a grafted model) and below
``evolve/``. Every result names the tasks it trained on and the tasks it held out.

Modules (each readable top to bottom like its paper's algorithm box):
    pool       the task pool every Task the registry loads offline, and the leave-out protocol
    episodes   meta-training episodes: an input with its nearest demonstrations (MetaICL-style)
    retrieval  ``meta_train_retrieval`` (Mueller et al. 2023)
    tune       ``meta_tune``: yes/no questions from label descriptions (Zhong et al. 2021)
    localize   skill localization by grafting (Panigrahi et al. 2023)
    gpicl      general-purpose in-context learning from scratch (Kirsch et al. 2022)
    rl/        meta-reinforcement learning (issue 25): Meta-World, Meta-DT, LPO, GROOVE

Nothing here is imported by ``import metaskill``; torch and friends load inside functions.
"""
