"""Small shipped copies of sst2, trec and ag_news (see each folder's SOURCE.md)."""
