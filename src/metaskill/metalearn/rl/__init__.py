"""Meta-reinforcement learning (issue 25), behind the ``metarl`` extra.

Modules:
    metaworld  ML1/ML10 task sets and offline datasets from the scripted expert policies
    meta_dt    Meta-DT (Wang et al. 2024) with the Prompt-DT and multi-task DT baselines
    lpo        learned policy optimisation (Lu et al. 2022), temporally aware (Jackson et al.
               2024), on gymnax with evosax's OpenAI-ES; GROOVE curricula (Jackson et al. 2023)
"""
