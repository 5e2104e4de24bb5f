"""The database: models, engine and sessions, migrations, the queue's operations.

Imports only SQLAlchemy, Alembic and the standard library.
"""
