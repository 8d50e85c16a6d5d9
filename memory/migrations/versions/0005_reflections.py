"""reflections: past failures of train-split tasks (problem, wrong answer, critique) with the embedding of
the problem text, scoped by task-set label, for reflection memory in the actor's prompt. A table of its own
rather than rows of `embeddings`: retrieval filters on scope, task and split in the query itself, and reads
new rows by an ever-growing `seq`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('reflections',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=255), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('episode_id', sa.String(length=64), nullable=False),
    sa.Column('task_id', sa.String(length=255), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('problem', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('critique', sa.Text(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['episode_id'], ['episodes.id'], name=op.f('fk_reflections_episode_id_episodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_reflections')),
    sa.UniqueConstraint('scope', 'model', 'episode_id', name='uq_reflections_scope_model_episode'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('reflections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reflections_episode_id'), ['episode_id'], unique=False)
        batch_op.create_index('ix_reflections_scope', ['scope', 'model', 'split', 'seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reflections', schema=None) as batch_op:
        batch_op.drop_index('ix_reflections_scope')
        batch_op.drop_index(batch_op.f('ix_reflections_episode_id'))

    op.drop_table('reflections')
