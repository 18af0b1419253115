"""seed_investors: the reference investors and stocks, and the line it prints."""
import seed_investors


def test_the_summary_names_the_reference_set_with_the_named_accounts_always_in_it(sqlite_url, capsys):
    """--investors 1 used to print 'seeded 5 new investors ... (1 investors and 25 stocks by default)'."""
    assert seed_investors.main(["--database-url", sqlite_url, "--investors", "1"]) == 0
    assert seed_investors.main(["--database-url", sqlite_url, "--investors", "7"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "seeded 5 new investors and 25 new stocks (the reference set: 5 investors, ids 1001 to 1005, and 25 stocks)",
        "seeded 2 new investors and 0 new stocks (the reference set: 7 investors, ids 1001 to 1007, and 25 stocks)"]
