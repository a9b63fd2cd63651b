-- Migration 11: a GPU's energy counter moves from its location row to its host's row (issue 17). Each
-- report's energy is the counter's delta since the host's previous report, so the counters of the
-- host's latest report are kept with its chain position, in the row every report updates anyway, as a
-- JSON object {"GPU UUID": millijoules}. gpu_locations is then written only when a GPU appears, moves,
-- changes serial, or was last written there a minute ago, not for every report (8 row updates a report
-- on an 8-GPU host before). Its last_energy_mj is no longer read.
ALTER TABLE hosts ADD COLUMN gpu_energy TEXT;
