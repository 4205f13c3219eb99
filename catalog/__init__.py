"""The catalog: table schemas, the stage ledger, Parquet writers and DuckDB views."""
