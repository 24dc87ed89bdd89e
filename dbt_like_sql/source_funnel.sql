-- Rows per stage per source: records read, rejected at each stage, and kept at the end.
with raw as (
    select source, count(*) as n from {{ ref('raw_samples') }} group by 1
), raw_rejected as (
    select source, count(*) as n from {{ ref('raw_samples_rejects') }} group by 1
), unified as (
    select source, count(*) as n from {{ ref('unified_samples') }} group by 1
), unified_rejected as (
    select source, count(*) as n from {{ ref('unified_samples_rejects') }} group by 1
), cleaned as (
    select source, count(*) as n from {{ ref('cleaned_samples') }} group by 1
), cleaned_rejected as (
    select source, count(*) as n from {{ ref('cleaned_samples_rejects') }} group by 1
), sources as (
    select source from raw union select source from raw_rejected
)
select
    source,
    coalesce(raw.n, 0) + coalesce(raw_rejected.n, 0) as records,
    coalesce(raw_rejected.n, 0) as rejected_at_ingest,
    coalesce(unified_rejected.n, 0) as rejected_at_mapping,
    coalesce(unified.n, 0) as unified,
    coalesce(cleaned_rejected.n, 0) as rejected_at_cleaning,
    coalesce(cleaned.n, 0) as cleaned
from sources
left join raw using (source)
left join raw_rejected using (source)
left join unified using (source)
left join unified_rejected using (source)
left join cleaned using (source)
left join cleaned_rejected using (source)
order by source
