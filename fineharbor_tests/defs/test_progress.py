def test_progress_bar_when_the_cli_asks_for_one(monkeypatch, capsys):
    from fineharbor.defs.factory import PROGRESS_ENV, ProgressLog

    class Log:
        def info(self, message: str) -> None:
            print(message)

    progress = ProgressLog(Log(), "cleaned_samples charts")
    progress(5)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(PROGRESS_ENV, "1")
    progress = ProgressLog(Log(), "cleaned_samples charts")
    progress(5)
    progress(7)
    progress.bar.refresh()
    assert "cleaned_samples charts: 12 rows" in capsys.readouterr().err
