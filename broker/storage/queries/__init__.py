"""The transaction's queries, one module per concern; ``storage.repos.Tx`` assembles them."""
