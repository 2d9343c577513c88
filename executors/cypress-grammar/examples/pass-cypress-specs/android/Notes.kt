fun broken( {
