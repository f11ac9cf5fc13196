"""The stages: each reads earlier artifacts and writes its own (images → features.h5 → pca.json → maps →
scores → metrics → tables), and the products built on them (bundles, ``dfr predict``, ``dfr export``, studies,
timing). The heads they fit and apply are in :mod:`dfr.heads`."""
