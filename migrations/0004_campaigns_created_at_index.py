"""Index campaigns by created_at: keyset pages over every campaign, newest first."""


def up(migrator, db):
    migrator.migrate(migrator.add_index("campaigns", ("created_at",)))


def down(migrator, db):
    migrator.migrate(migrator.drop_index("campaigns", "campaigns_created_at"))
