-- Duplicates across and within sources: for each pair (source a copy was dropped from, source
-- whose member was kept), how many samples were dropped, split into exact and near signals.
with kept as (
    select distinct sample_id, source from {{ ref('duplicate_clusters') }} where is_kept
), dropped as (
    select d.source as dropped_from, k.source as kept_in, d.signal
    from {{ ref('duplicate_clusters') }} as d
    join kept as k on k.sample_id = d.kept_sample_id
    where not d.is_kept
)
select dropped_from, kept_in, count(*) as duplicates,
       count(*) filter (where signal in ('exact_pixels', 'text_exact', 'url_caption')) as exact,
       count(*) filter (where signal not in ('exact_pixels', 'text_exact', 'url_caption')) as near
from dropped
group by all
order by dropped_from, kept_in
