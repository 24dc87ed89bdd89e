-- Rows per stage per source: records read, rejected at each stage, and kept at the end.
with raw as (
    select source, count(*) as n from {{ ref('raw_samples') }} group by 1
), raw_rejected as (
    select source, count(*) as n from {{ ref('raw_samples_rejects') }} group by 1
), mapping_rejected as (
    select source, count(*) as n from {{ ref('unified_samples_rejects') }} group by 1
), cleaning_rejected as (
    select source, count(*) as n from {{ ref('cleaned_samples_rejects') }} group by 1
), dedup_rejected as (
    select source, count(*) as n from {{ ref('deduplicated_samples_rejects') }} group by 1
), decontam_rejected as (
    select source, count(*) as n from {{ ref('decontaminated_samples_rejects') }} group by 1
), final as (
    select source, count(*) as n from {{ ref('decontaminated_samples') }} group by 1
), sources as (
    select source from raw union select source from raw_rejected
)
select
    source,
    coalesce(raw.n, 0) + coalesce(raw_rejected.n, 0) as records,
    coalesce(raw_rejected.n, 0) as rejected_at_ingest,
    coalesce(mapping_rejected.n, 0) as rejected_at_mapping,
    coalesce(cleaning_rejected.n, 0) as rejected_at_cleaning,
    coalesce(dedup_rejected.n, 0) as duplicates,
    coalesce(decontam_rejected.n, 0) as rejected_at_decontam,
    coalesce(final.n, 0) as kept
from sources
left join raw using (source)
left join raw_rejected using (source)
left join mapping_rejected using (source)
left join cleaning_rejected using (source)
left join dedup_rejected using (source)
left join decontam_rejected using (source)
left join final using (source)
order by source
