-- What the release holds per source (one Hub config each): license, samples, images, turns
-- and the share of samples. The row with source '*' is the whole release.
with per_source as (
    select source, any_value(license) as license, count(*) as samples,
           sum(n_images) as images, sum(n_turns) as turns
    from {{ ref('release_mix') }}
    group by source
), total as (
    select '*' as source, string_agg(distinct license, ', ' order by license) as license,
           sum(samples) as samples, sum(images) as images, sum(turns) as turns
    from per_source
)
select source, license, samples, images, turns,
       round(samples / nullif(sum(samples) filter (where source <> '*') over (), 0), 5) as share
from (select * from per_source union all select * from total)
order by source = '*', source
