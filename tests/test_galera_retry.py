"""A Galera node's refusals are retried (bounded, one log line), and a batch is never left running by them
(docs/high-availability.md). The cluster itself is bench/galera.sh's."""
import pymysql
import pytest
from sqlalchemy import select, update

import batches
import db_retry
from schema import load_batches

NOT_PRIMARY = (1180, "Error while appending streaming replication fragment(provider status: Not connected to "
                     "Primary Component)")
NOT_READY = (1047, "WSREP has not yet prepared node for application use")


def failing(times, error):
    calls = []

    def work():
        calls.append(1)
        if len(calls) <= times:
            raise pymysql.err.OperationalError(*error)
        return "done"
    return work, calls


@pytest.mark.parametrize("error", [NOT_PRIMARY, NOT_READY])
def test_a_refusal_while_the_cluster_re_forms_is_retried_with_one_log_line(error, caplog):
    work, calls = failing(6, error)  # more than the 3 attempts a deadlock gets

    assert db_retry.with_retries(work, "t.csv: load", pause_seconds=0) == "done"

    assert len(calls) == 7
    assert [record.getMessage() for record in caplog.records] == [
        f"t.csv: load: {pymysql.err.OperationalError(*error)}; trying again while the cluster re-forms (up to "
        f"{sum(db_retry.CLUSTER_PAUSES):.0f} s)"]


def test_a_refusal_that_lasts_is_raised_in_the_end():
    work, calls = failing(10_000, NOT_READY)

    with pytest.raises(pymysql.err.OperationalError):
        db_retry.with_retries(work, "x", pause_seconds=0)

    assert len(calls) == len(db_retry.CLUSTER_PAUSES) + db_retry.ATTEMPTS


def test_galera_refusals_are_transient_and_a_certification_failure_is_a_deadlock():
    for code in (1047, 1180, 1213):
        assert db_retry.is_transient(pymysql.err.OperationalError(code, "x"))
    assert db_retry.is_cluster_refusal(pymysql.err.OperationalError(1180, "x"))
    assert not db_retry.is_cluster_refusal(pymysql.err.OperationalError(1213, "x"))


def test_marking_a_batch_failed_never_changes_one_that_its_lost_commit_loaded(seeded_engine):
    """The server died while answering the load's COMMIT: the commit may have gone through (on a Galera cluster,
    replicated to the other nodes); the loader, which saw an error, must not mark that batch failed."""
    loaded = batches.start_batch(seeded_engine, "a.csv", "0" * 64, batches.now())
    running = batches.start_batch(seeded_engine, "b.csv", "1" * 64, batches.now())
    with seeded_engine.begin() as connection:
        connection.execute(update(load_batches).where(load_batches.c.batch_id == loaded).values(status="loaded"))

    for batch_id in (loaded, running):
        batches.fail_batch(seeded_engine, batch_id, RuntimeError("Lost connection to server during query"))

    with seeded_engine.connect() as connection:
        statuses = dict(connection.execute(select(load_batches.c.batch_id, load_batches.c.status)).all())
    assert (statuses[loaded], statuses[running]) == ("loaded", "failed")


def test_every_table_has_a_primary_key():
    """Galera certifies and applies rows by primary key (docs/high-availability.md)."""
    import schema
    assert [table.name for table in schema.metadata.sorted_tables if not table.primary_key.columns] == []


def test_a_follow_up_refused_again_and_again_backs_off_and_says_so_once(monkeypatch, caplog):
    """until_it_works (the live follow-ups): a deadlock repeated 25 times is retried with growing pauses and
    logged once at WARNING, not spun on silently."""
    pauses = []
    monkeypatch.setattr(db_retry.time, "sleep", pauses.append)
    work, calls = failing(25, (1213, "Deadlock found when trying to get lock; try restarting transaction"))
    assert db_retry.until_it_works(work, "live follow-up of batch 7") == "done"
    assert len(calls) == 26
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == ["live follow-up of batch 7: (1213, 'Deadlock found when trying to get lock; try restarting "
                        "transaction'); trying again (20 times so far)"], warnings
    assert all(0 <= pause <= min(1.0, 0.01 * number) for number, pause in enumerate(pauses, start=1))
