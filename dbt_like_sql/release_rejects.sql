-- Release input samples left out of the release, by source and reason (thresholds, turn-level
-- judge minimums, source weights and caps, balanced concept sampling).
select source, reason, count(*) as samples
from {{ ref('release_mix_rejects') }}
group by all
order by source, reason
