-- Every rejected row of every stage, counted by stage, source and reason code.
select 'raw_samples' as stage, source, reason, count(*) as rows
from {{ ref('raw_samples_rejects') }} group by all
union all
select 'unified_samples' as stage, source, reason, count(*) as rows
from {{ ref('unified_samples_rejects') }} group by all
union all
select 'cleaned_samples' as stage, source, reason, count(*) as rows
from {{ ref('cleaned_samples_rejects') }} group by all
union all
select 'deduplicated_samples' as stage, source, reason, count(*) as rows
from {{ ref('deduplicated_samples_rejects') }} group by all
union all
select 'decontaminated_samples' as stage, source, reason, count(*) as rows
from {{ ref('decontaminated_samples_rejects') }} group by all
order by stage, source, rows desc
