"""Execution stores, one module or subpackage per backend below the protocol (base.py).

Nothing is imported here: the PostgreSQL store needs the optional psycopg, imported only when
that store is opened.
"""
