DROP TABLE `diesel_on_commit_outbox_meta`;
DROP TABLE `diesel_on_commit_outbox`;
