-- Comparing runs and accounting for their LLM calls.
-- Who debated a run: "deterministic" or "llm:<model>". Part of the run id, so the same slot can be
-- run with and without the LLM and the two compared; a column so runs can be listed by it.
ALTER TABLE runs ADD COLUMN debater text NOT NULL DEFAULT 'deterministic';

-- Runs made before this column: an LLM debate left its name on the verdicts.
UPDATE runs SET debater = d.debater
FROM (SELECT DISTINCT ON (run_id) run_id, debater FROM debates WHERE debater LIKE 'llm:%' ORDER BY run_id, debater) d
WHERE runs.run_id = d.run_id;

CREATE INDEX runs_as_of ON runs (as_of DESC);

-- HTTP requests an LLM call took (the client retries timeouts and 5xx): retries = attempts - 1.
ALTER TABLE llm_calls ADD COLUMN attempts integer NOT NULL DEFAULT 1 CHECK (attempts >= 1);
