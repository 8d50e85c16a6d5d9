"""schedules: leases (one cycle of a recipe at a time, across processes and hosts), the record of every
schedule firing (so a failed or skipped one is visible and the next firing retries it), and APScheduler's job
store table (the schedules), created here rather than by whichever scheduler starts first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 02:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    op.create_table('schedule_firings',
    sa.Column('schedule_id', sa.String(length=191), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recipe', sa.Text(), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cycle', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('schedule_id', 'scheduled_at', name=op.f('pk_schedule_firings'))
    )
    with op.batch_alter_table('schedule_firings', schema=None) as batch_op:
        batch_op.create_index('ix_schedule_firings_started', ['schedule_id', 'started_at'], unique=False)

    op.create_table('apscheduler_jobs',
    sa.Column('id', sa.String(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_apscheduler_jobs'))
    )
    with op.batch_alter_table('apscheduler_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_apscheduler_jobs_next_run_time'), ['next_run_time'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('apscheduler_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_apscheduler_jobs_next_run_time'))

    op.drop_table('apscheduler_jobs')
    with op.batch_alter_table('schedule_firings', schema=None) as batch_op:
        batch_op.drop_index('ix_schedule_firings_started')

    op.drop_table('schedule_firings')
    op.drop_table('leases')
