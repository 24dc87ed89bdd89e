-- FineVision's judge rating distribution (1-5) per axis over the turns in the release, after
-- turn-level filtering. Unrated turns are not counted; a release input without judge ratings
-- (the columns are null) gives no rows.
with turns as (
    select 'relevance' as axis, unnest(relevance_ratings) as rating from {{ ref('release_mix') }}
    union all
    select 'image_correspondence', unnest(image_correspondence_ratings) from {{ ref('release_mix') }}
    union all
    select 'visual_dependency', unnest(visual_dependency_ratings) from {{ ref('release_mix') }}
    union all
    select 'formatting', unnest(formatting_ratings) from {{ ref('release_mix') }}
)
select axis, rating, count(*) as turns,
       round(count(*) / sum(count(*)) over (partition by axis), 5) as share
from turns
where rating is not null
group by axis, rating
order by axis, rating
