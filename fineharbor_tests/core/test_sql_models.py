import duckdb
import pytest

from fineharbor.core.sql_models import SqlModelError, load_models, run_model


def write(directory, **models):
    for name, sql in models.items():
        (directory / f"{name}.sql").write_text(sql)
    return directory


def test_models_run_in_ref_order_and_render_to_duckdb(tmp_path):
    write(
        tmp_path,
        b_totals="-- Totals per source.\nselect source, sum(n) n from {{ ref('a_counts') }} group by 1",
        a_counts="select source, count(*) n from {{ref( 'stage' )}} group by 1",
    )
    models = load_models(tmp_path, {"stage"})
    assert [m.name for m in models] == ["a_counts", "b_totals"]
    assert models[1].refs == ("a_counts",) and models[1].description == "Totals per source."
    with duckdb.connect() as connection:
        connection.execute(
            "create view stage as select * from (values ('x'), ('x'), ('y')) t(source)"
        )
        connection.execute(f"create view a_counts as {models[0].render()}")
        result = run_model(connection, models[1]).to_pylist()
    assert sorted((r["source"], r["n"]) for r in result) == [("x", 2), ("y", 1)]


def test_unknown_ref_names_the_file(tmp_path):
    write(tmp_path, m="select * from {{ ref('nope') }}")
    with pytest.raises(SqlModelError, match=r"m\.sql: unknown ref 'nope'"):
        load_models(tmp_path, {"stage"})


def test_cycle_is_an_error(tmp_path):
    write(tmp_path, a="select * from {{ ref('b') }}", b="select * from {{ ref('a') }}")
    with pytest.raises(SqlModelError, match="cycle"):
        load_models(tmp_path, set())


def test_repository_models_load_against_stage_views():
    from fineharbor.defs.sql_models import SQL_MODEL_ASSETS

    assert {a.key.path[-1] for a in SQL_MODEL_ASSETS} >= {"source_funnel", "rejects_by_reason"}
