"""The ``Agent`` declaration: options parsed and validated once, schemas, tools, the template.

The lowest layer with clients: it knows nothing of the database tables, the turn or the store.
"""
