"""Demonstration retrieval for in-context learning: pools, embeddings, FAISS indexes, selection, order.

Modules, one concept each: `pool` (reading pool files), `embedder` (texts -> unit vectors),
`ann` (FAISS indexes), `index` (a searchable, persistable pool), `select` and `order`
(which demonstrations, in which order), `library` (pools and indexes by name, for the app),
`cli` (`python -m retrieval build|search`). Nothing is imported here, so importing one
module stays cheap.
"""
