-- FineVision's contamination table: per train source and benchmark, the samples and images
-- flagged, with the rate computed both ways (flagged images / all images, flagged samples /
-- all samples). Rows with benchmark '*' are per-source totals; source '*' is the whole set.
with checked as (
    -- samples that went through decontamination (benchmark sources excluded)
    select d.source, d.sample_id
    from {{ ref('deduplicated_samples') }} as d
    where d.source not in (
        select distinct source from {{ ref('decontaminated_samples_rejects') }}
        where reason = 'benchmark_source'
    )
), images as (
    select sample_id, count(*) as n from {{ ref('image_signatures') }} group by 1
), totals as (
    select c.source, count(*) as samples, coalesce(sum(i.n), 0) as images
    from checked as c left join images as i using (sample_id)
    group by 1
), flagged as (
    select source, benchmark, count(*) as samples_flagged, sum(images_flagged) as images_flagged
    from {{ ref('decontaminated_samples_rejects') }}
    where reason = 'benchmark_match'
    group by 1, 2
), per_benchmark as (
    select t.source, f.benchmark, t.samples, t.images, f.samples_flagged, f.images_flagged
    from totals as t join flagged as f using (source)
), per_source as (
    select t.source, '*' as benchmark, t.samples, t.images,
           coalesce(sum(f.samples_flagged), 0) as samples_flagged,
           coalesce(sum(f.images_flagged), 0) as images_flagged
    from totals as t left join flagged as f using (source)
    group by t.source, t.samples, t.images
), overall as (
    select '*' as source, '*' as benchmark, sum(samples) as samples, sum(images) as images,
           sum(samples_flagged) as samples_flagged, sum(images_flagged) as images_flagged
    from per_source
)
select
    source, benchmark, samples, images, samples_flagged, images_flagged,
    round(images_flagged / nullif(images, 0), 5) as image_rate,
    round(samples_flagged / nullif(samples, 0), 5) as sample_rate
from (
    select * from per_benchmark union all select * from per_source union all select * from overall
)
order by source = '*', source, benchmark = '*', benchmark
