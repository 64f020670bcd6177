-- An artifact link belongs to at most one active recipe and one active image: enforced by the
-- database, so concurrent requests (and several `ims serve` replicas) cannot both take one link.
DROP INDEX recipes_link;
DROP INDEX images_link;
CREATE UNIQUE INDEX recipes_link_unique ON recipes (link_path);
CREATE UNIQUE INDEX images_link_unique ON images (link_path);
