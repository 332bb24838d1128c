"""Skills: the SkillBook, skill discovery and the Missing-Skill Profile.

* :mod:`metaskill.skills.embed` -- ``Embedder.encode(texts)`` (MiniLM or a hash fake),
  with a SQLite embedding cache.
* :mod:`metaskill.skills.book` -- :class:`Skill` and :class:`SkillBook` (SQLite, WAL):
  skills, labelled examples, ``nearest_skills`` and ``exemplars`` by cosine similarity,
  JSON export/import.
* :mod:`metaskill.skills.discover` -- skills from the task's labels, from a teacher LM
  (metacognitive labelling + clustering), from a user catalog, or from embedding clusters
  named by their members' majority label, a teacher's short name, or distinctive terms.
* :mod:`metaskill.skills.profile` -- which skills a Solver lacks on held-out examples.

Names are imported on first use, so ``import metaskill.skills`` stays light.

Example:
    >>> from metaskill.skills import SkillBook, HashEmbedder, Skill
    >>> book = SkillBook(embedder=HashEmbedder(dim=32))
    >>> book.add_skill(Skill(name="counting")).name
    'counting'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Embedder": "metaskill.skills.embed",
    "EmbeddingCache": "metaskill.skills.embed",
    "HashEmbedder": "metaskill.skills.embed",
    "SentenceTransformerEmbedder": "metaskill.skills.embed",
    "load_embedder": "metaskill.skills.embed",
    "Skill": "metaskill.skills.book",
    "SkillStats": "metaskill.skills.book",
    "SkillBook": "metaskill.skills.book",
    "to_snake": "metaskill.skills.book",
    "DiscoveryConfig": "metaskill.skills.discover",
    "CatalogEntry": "metaskill.skills.discover",
    "discover": "metaskill.skills.discover",
    "discover_from_labels": "metaskill.skills.discover",
    "discover_metacognitive": "metaskill.skills.discover",
    "discover_from_catalog": "metaskill.skills.discover",
    "discover_by_embedding": "metaskill.skills.discover",
    "load_catalog": "metaskill.skills.discover",
    "ClusterName": "metaskill.skills.discover",
    "majority_label": "metaskill.skills.discover",
    "name_clusters": "metaskill.skills.discover",
    "naming_labels": "metaskill.skills.discover",
    "Profile": "metaskill.skills.profile",
    "ProfileConfig": "metaskill.skills.profile",
    "SkillProfile": "metaskill.skills.profile",
    "build_profile": "metaskill.skills.profile",
    "apply_to_book": "metaskill.skills.profile",
    "print_profile": "metaskill.skills.profile",
    "profile_section": "metaskill.skills.profile",
    "profile_section_builder": "metaskill.skills.profile",
    "profile_section_html": "metaskill.skills.profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaskill.skills' has no attribute '{name}'")
